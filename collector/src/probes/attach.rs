//! Loading and attaching one program, turning every failure into a [`ProbeState`].

use std::io;

use std::io::Read as _;

use aya::{
    Ebpf,
    programs::{BtfTracePoint, Iter},
};

use super::{error_text, status::ProbeState};

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
        return classify(&e, &format!("loading {program}"));
    }
    match prog.attach() {
        Ok(_link) => ProbeState::Active { note: None },
        Err(e) => classify(&e, &format!("attaching {program}")),
    }
}

/// Loads a task iterator, runs it once over every task (reading its output to the end runs it)
/// and detaches it.
pub fn run_task_iterator(ebpf: &mut Ebpf, program: &str, btf: &aya::Btf) -> Result<(), ProbeState> {
    let Some(prog) = ebpf.program_mut(program) else {
        return Err(ProbeState::Failed(format!(
            "program {program} missing from the eBPF object"
        )));
    };
    let prog: &mut Iter = prog.try_into().map_err(|e| {
        ProbeState::Failed(format!("{program} is not an iterator: {}", error_text(&e)))
    })?;
    prog.load("task", btf)
        .map_err(|e| classify(&e, &format!("loading {program}")))?;
    let link = prog
        .attach()
        .and_then(|id| prog.take_link(id))
        .map_err(|e| classify(&e, &format!("attaching {program}")))?;
    let mut file = link
        .into_file()
        .map_err(|e| classify(&e, &format!("opening {program}")))?;
    let mut out = Vec::new();
    file.read_to_end(&mut out)
        .map_err(|e| classify(&e, &format!("running {program}")))?;
    // Done: unload it (its work, the baselines, stays in the map).
    let _ = prog.unload();
    Ok(())
}

/// Longest failure reason carried in the stream; verifier logs can run to megabytes.
pub const MAX_REASON_LEN: usize = 1024;

/// What the tracing programs need to load, said when the kernel refuses for lack of privilege.
const TRACING_PERMISSION_HINT: &str = "run as root or with CAP_BPF + CAP_PERFMON, and \
     CAP_SYS_RESOURCE on kernels before 5.11";

/// EPERM/EACCES means "not allowed here" (Unsupported), anything else is a real failure.
pub fn classify(error: &(dyn std::error::Error + 'static), doing: &str) -> ProbeState {
    classify_with(error, doing, TRACING_PERMISSION_HINT)
}

/// [`classify`], naming what a refused program type needs in `permission_hint`.
pub fn classify_with(
    error: &(dyn std::error::Error + 'static),
    doing: &str,
    permission_hint: &str,
) -> ProbeState {
    let mut text = format!("{doing}: {}", error_text(error));
    let mut permission = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            permission |= is_permission(io);
        }
        source = e.source();
    }
    if permission {
        text.push_str(&format!(" (not permitted: {permission_hint})"));
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
