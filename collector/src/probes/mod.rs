//! eBPF probes: loading, per-program status, and reading their maps.

pub mod btf;
pub mod cpu_time;
pub mod offsets;
pub mod status;

use std::{io, path::PathBuf};

use aya::{Ebpf, EbpfLoader, maps::Map, programs::BtfTracePoint};
use collector_common::names;

pub use cpu_time::{CpuTimeRead, CpuTimeReader};
pub use status::{ProbeState, ProbeStatus};

/// The compiled eBPF object (built by build.rs from collector-ebpf).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector-ebpf"));

/// What `sched_switch` fills.
const CPU_PROVIDES: &str = "ebpf_cpu";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
}

impl ProbeError {
    fn map(name: &'static str) -> impl Fn(aya::maps::MapError) -> Self {
        move |source| Self::Map { name, source }
    }
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Load nothing: cgroupfs-only mode.
    pub disabled: bool,
    /// Capacity of the per-cgroup maps.
    pub max_cgroups: u32,
    /// Forward aya-log records from the programs into our logs.
    pub ebpf_log: bool,
    pub btf_path: PathBuf,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            disabled: false,
            max_cgroups: 16_384,
            ebpf_log: false,
            btf_path: PathBuf::from(offsets::VMLINUX_BTF),
        }
    }
}

/// The loaded programs and the readers of their maps. Any subset may be missing; `statuses` says
/// which and why.
pub struct Probes {
    pub cpu_time: Option<CpuTimeReader>,
    pub statuses: Vec<ProbeStatus>,
    /// Keeps programs attached and maps open for as long as the probes live.
    _ebpf: Option<Ebpf>,
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Probes {
    /// Loads and attaches every probe it can. Never fails: what cannot run is reported per
    /// program, and the collector carries on with cgroupfs alone.
    pub fn load(config: &ProbeConfig) -> Self {
        let mut probes = Self {
            cpu_time: None,
            statuses: Vec::new(),
            _ebpf: None,
            logger: None,
        };
        if config.disabled {
            probes.set_all(ProbeState::Unsupported("disabled by --no-ebpf".into()));
            return probes;
        }
        if EBPF_OBJECT.is_empty() {
            probes.set_all(ProbeState::Unsupported(
                "this binary was built with AYA_BUILD_SKIP=1 and has no eBPF programs".into(),
            ));
            return probes;
        }
        let btf = match aya::Btf::from_sys_fs() {
            Ok(btf) => btf,
            Err(e) => {
                probes.set_all(ProbeState::Unsupported(format!(
                    "no kernel BTF ({}): {e}",
                    config.btf_path.display()
                )));
                return probes;
            }
        };
        let (offsets, note) = match offsets::task_offsets(&config.btf_path) {
            Ok(o) => (o, None),
            Err(e) => (
                collector_common::TaskOffsets::default(),
                Some(format!(
                    "running intervals not visible until switch-out: {e}"
                )),
            ),
        };
        // aya-log level: 0 = off unless asked for (the programs still compile the calls in).
        let log_level: u8 = if config.ebpf_log { 0xff } else { 0 };
        let mut ebpf = match EbpfLoader::new()
            .btf(Some(&btf))
            .override_global(names::TASK_OFFSETS_GLOBAL, &offsets, true)
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .map_max_entries(names::CPU_TIME_MAP, config.max_cgroups)
            .load(EBPF_OBJECT)
        {
            Ok(ebpf) => ebpf,
            Err(e) => {
                probes.set_all(classify_load_error(&e, "creating maps"));
                return probes;
            }
        };
        if config.ebpf_log {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(logger) => probes.logger = Some(logger),
                Err(e) => tracing::warn!("aya-log not available: {e}"),
            }
        }

        let state =
            attach_btf_tracepoint(&mut ebpf, names::SCHED_SWITCH_PROG, "sched_switch", &btf);
        if matches!(state, ProbeState::Active { .. }) {
            match cpu_time_reader(&mut ebpf) {
                Ok(reader) => probes.cpu_time = Some(reader),
                Err(e) => {
                    probes.push(
                        names::SCHED_SWITCH_PROG,
                        CPU_PROVIDES,
                        ProbeState::Failed(e.to_string()),
                    );
                    probes._ebpf = Some(ebpf);
                    return probes;
                }
            }
        }
        let state = match state {
            ProbeState::Active { .. } => ProbeState::Active { note },
            other => other,
        };
        probes.push(names::SCHED_SWITCH_PROG, CPU_PROVIDES, state);
        probes._ebpf = Some(ebpf);
        probes
    }

    fn push(&mut self, name: &'static str, provides: &'static str, state: ProbeState) {
        self.statuses.push(ProbeStatus {
            name,
            provides,
            state,
        });
    }

    fn set_all(&mut self, state: ProbeState) {
        self.push(names::SCHED_SWITCH_PROG, CPU_PROVIDES, state);
    }
}

fn attach_btf_tracepoint(
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
        return classify_load_error(&e, "loading");
    }
    match prog.attach() {
        Ok(_link) => ProbeState::Active { note: None },
        Err(e) => classify_load_error(&e, "attaching"),
    }
}

fn cpu_time_reader(ebpf: &mut Ebpf) -> Result<CpuTimeReader, ProbeError> {
    let mut take = |name: &'static str| ebpf.take_map(name).ok_or(ProbeError::MissingMap(name));
    let committed = take(names::CPU_TIME_MAP)?;
    let running = take(names::RUNNING_MAP)?;
    let counters = take(names::COUNTERS_MAP)?;
    let conv = |name: &'static str| ProbeError::map(name);
    Ok(CpuTimeReader::new(
        map_into(committed).map_err(conv(names::CPU_TIME_MAP))?,
        map_into(running).map_err(conv(names::RUNNING_MAP))?,
        map_into(counters).map_err(conv(names::COUNTERS_MAP))?,
    ))
}

fn map_into<T: TryFrom<Map, Error = aya::maps::MapError>>(
    map: Map,
) -> Result<T, aya::maps::MapError> {
    T::try_from(map)
}

/// Longest failure reason carried in the stream; verifier logs can run to megabytes.
const MAX_REASON_LEN: usize = 1024;

/// EPERM/EACCES means "not allowed here" (Unsupported), anything else is a real failure.
fn classify_load_error(error: &(dyn std::error::Error + 'static), doing: &str) -> ProbeState {
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
        match classify_load_error(&e, "loading") {
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
        match classify_load_error(&e, "loading") {
            ProbeState::Failed(why) => {
                assert!(why.len() < MAX_REASON_LEN + 100, "{}", why.len());
                assert!(why.ends_with("full text)"));
            }
            other => panic!("{other:?}"),
        }
    }
}
