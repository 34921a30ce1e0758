//! Loading and attaching one program, turning every failure into a [`ProbeState`].

use std::io;

use aya::{
    Ebpf,
    programs::{
        BtfTracePoint, PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};

use super::status::ProbeState;

/// Loads `program` (a tp_btf program in the object) against `tracepoint` and attaches it.
pub fn btf_tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    tracepoint: &str,
    btf: &aya::Btf,
) -> ProbeState {
    let Some(prog) = ebpf.program_mut(program) else {
        return ProbeState::Failed(format!("program {program} missing from the eBPF object"));
    };
    let prog: &mut BtfTracePoint = match prog.try_into() {
        Ok(p) => p,
        Err(e) => return ProbeState::Failed(format!("{program} is not a tp_btf program: {e}")),
    };
    if let Err(e) = prog.load(tracepoint, btf) {
        return classify(&e, "loading");
    }
    match prog.attach() {
        Ok(_link) => ProbeState::Active { note: None },
        Err(e) => classify(&e, "attaching"),
    }
}

/// Loads a perf_event program and opens one software event per CPU in `cpus` with sample period
/// 1, so the program runs on every event.
pub fn software_event_per_cpu(
    ebpf: &mut Ebpf,
    program: &str,
    event: SoftwareEvent,
    cpus: &[u32],
) -> ProbeState {
    let Some(prog) = ebpf.program_mut(program) else {
        return ProbeState::Failed(format!("program {program} missing from the eBPF object"));
    };
    let prog: &mut PerfEvent = match prog.try_into() {
        Ok(p) => p,
        Err(e) => return ProbeState::Failed(format!("{program} is not a perf_event program: {e}")),
    };
    if let Err(e) = prog.load() {
        return classify(&e, "loading");
    }
    for &cpu in cpus {
        let attached = prog.attach(
            PerfEventConfig::Software(event),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Period(1),
            true,
        );
        if let Err(e) = attached {
            return classify(&e, &format!("attaching on CPU {cpu}"));
        }
    }
    ProbeState::Active {
        note: Some(format!(
            "{} CPUs; CPUs brought online later are not counted until restart",
            cpus.len()
        )),
    }
}

/// Longest failure reason carried in the stream; verifier logs can run to megabytes.
pub const MAX_REASON_LEN: usize = 1024;

/// EPERM/EACCES means "not allowed here" (Unsupported), anything else is a real failure.
pub fn classify(error: &(dyn std::error::Error + 'static), doing: &str) -> ProbeState {
    let mut text = format!("{doing}: {error}");
    let mut permission = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = error.source();
    if let Some(io) = error.downcast_ref::<io::Error>() {
        permission |= is_permission(io);
    }
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            permission |= is_permission(io);
        }
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    if permission {
        text.push_str(
            " (not permitted: run as root or with CAP_BPF + CAP_PERFMON + CAP_SYS_RESOURCE)",
        );
        return ProbeState::Unsupported(text);
    }
    tracing::debug!("full probe error: {text}");
    if text.len() > MAX_REASON_LEN {
        let cut = (0..=MAX_REASON_LEN)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str("… (truncated; run with RUST_LOG=debug for the full text)");
    }
    ProbeState::Failed(text)
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("loading program")]
    struct Outer(#[source] io::Error);

    #[test]
    fn permission_errors_anywhere_in_the_chain_are_unsupported() {
        let e = Outer(io::Error::from_raw_os_error(libc::EPERM));
        match classify(&e, "loading") {
            ProbeState::Unsupported(why) => {
                assert!(why.starts_with("loading: loading program"), "{why}");
                assert!(why.contains("CAP_BPF"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_errors_fail_with_a_bounded_reason() {
        let huge = "verifier says no. ".repeat(10_000);
        let e = Outer(io::Error::other(huge));
        match classify(&e, "loading") {
            ProbeState::Failed(why) => {
                assert!(why.len() < MAX_REASON_LEN + 100, "{}", why.len());
                assert!(why.ends_with("full text)"));
            }
            other => panic!("{other:?}"),
        }
    }
}
