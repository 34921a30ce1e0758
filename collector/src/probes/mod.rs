//! eBPF probes: loading, per-program status, and reading their maps.
//!
//! Every program is loaded and attached on its own, so the collector runs with any subset; what
//! did not come up says why in its [`ProbeStatus`]. Families: CPU time (`sched_switch`), page
//! faults (perf software events), run-queue latency (wakeup + switch), OOM kills
//! (`mark_victim`) and cgroup lifecycle (`cgroup_mkdir`/`cgroup_rmdir`, cgroup2 only).

pub mod attach;
pub mod btf;
pub mod cpu_time;
pub mod events;
pub mod maps;
pub mod offsets;
pub mod run_stats;
pub mod status;

use std::path::PathBuf;

use aya::{Ebpf, EbpfLoader, maps::Map, programs::perf_event::SoftwareEvent};
use collector_common::names;

pub use cpu_time::{CpuTimeRead, CpuTimeReader};
pub use events::{EventReader, ProbeEvent};
pub use maps::{DropCounters, Drops, FaultReader, RUNQ_VALUES, RunqReader};
pub use run_stats::{ProgramRunStats, RunStats};
pub use status::{ProbeState, ProbeStatus};

/// The compiled eBPF object (built by build.rs from collector-ebpf).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector-ebpf"));

/// What each family fills, as reported beside each program's status.
const CPU_PROVIDES: &str = "ebpf_cpu";
const FAULTS_PROVIDES: &str = "ebpf_faults";
const RUNQ_PROVIDES: &str = "runq_latency";
const OOM_PROVIDES: &str = "oom_kills";
const LIFECYCLE_PROVIDES: &str = "cgroup_lifecycle";

/// The status name of the OOM program, whichever variant this kernel needs.
pub const OOM_STATUS_NAME: &str = "oom_mark_victim";

/// Every program, with what it provides, in the order statuses are reported.
const ALL: &[(&str, &str)] = &[
    (names::SCHED_SWITCH_PROG, CPU_PROVIDES),
    (names::PAGE_FAULTS_MINOR_PROG, FAULTS_PROVIDES),
    (names::PAGE_FAULTS_MAJOR_PROG, FAULTS_PROVIDES),
    (names::SCHED_WAKEUP_PROG, RUNQ_PROVIDES),
    (names::SCHED_WAKEUP_NEW_PROG, RUNQ_PROVIDES),
    (names::RUNQ_SWITCH_PROG, RUNQ_PROVIDES),
    (OOM_STATUS_NAME, OOM_PROVIDES),
    (names::CGROUP_MKDIR_PROG, LIFECYCLE_PROVIDES),
    (names::CGROUP_RMDIR_PROG, LIFECYCLE_PROVIDES),
];

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
    /// Capacity of each per-cgroup map (CPU time, faults, run-queue latency).
    pub max_cgroups: u32,
    /// Forward aya-log records from the programs into our logs.
    pub ebpf_log: bool,
    pub btf_path: PathBuf,
    /// Turn on the kernel's bpf_stats for per-program run counts and time. While on, every BPF
    /// program on the machine pays two clock reads per run (`cargo xtask bench` measures it).
    pub run_stats: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            disabled: false,
            max_cgroups: 16_384,
            ebpf_log: false,
            btf_path: PathBuf::from(offsets::VMLINUX_BTF),
            run_stats: true,
        }
    }
}

/// The loaded programs and the readers of their maps. Any subset may be missing; `statuses` says
/// which and why.
pub struct Probes {
    pub cpu_time: Option<CpuTimeReader>,
    pub faults: Option<FaultReader>,
    pub runqueue: Option<RunqReader>,
    pub events: Option<EventReader>,
    pub drops: Option<DropCounters>,
    pub statuses: Vec<ProbeStatus>,
    run_stats: Option<RunStats>,
    /// Keeps programs attached and maps open for as long as the probes live.
    ebpf: Option<Ebpf>,
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Probes {
    fn none() -> Self {
        Self {
            cpu_time: None,
            faults: None,
            runqueue: None,
            events: None,
            drops: None,
            statuses: Vec::new(),
            run_stats: None,
            ebpf: None,
            logger: None,
        }
    }

    /// Loads and attaches every probe it can. Never fails: what cannot run is reported per
    /// program, and the collector carries on with what it has (cgroupfs at least).
    pub fn load(config: &ProbeConfig) -> Self {
        let mut probes = Self::none();
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
        // Parsed once: struct offsets and tracepoint prototypes both come from it.
        let own_btf = btf::Btf::from_file(&config.btf_path);
        let offsets = own_btf
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|b| offsets::task_offsets(b).map_err(|e| e.to_string()));
        let (offsets, offsets_error) = match offsets {
            Ok(o) => (o, None),
            Err(e) => (collector_common::TaskOffsets::default(), Some(e)),
        };
        // aya-log level: 0 = off unless asked for (the programs still compile the calls in).
        let log_level: u8 = if config.ebpf_log { 0xff } else { 0 };
        let mut ebpf = match EbpfLoader::new()
            .btf(Some(&btf))
            .override_global(names::TASK_OFFSETS_GLOBAL, &offsets, true)
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .map_max_entries(names::CPU_TIME_MAP, config.max_cgroups)
            .map_max_entries(names::FAULTS_MAP, config.max_cgroups)
            .map_max_entries(names::RUNQ_LATENCY_MAP, config.max_cgroups)
            .load(EBPF_OBJECT)
        {
            Ok(ebpf) => ebpf,
            Err(e) => {
                probes.set_all(attach::classify(&e, "creating maps"));
                return probes;
            }
        };
        if config.ebpf_log {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(logger) => probes.logger = Some(logger),
                Err(e) => tracing::warn!("aya-log not available: {e}"),
            }
        }
        probes.drops = take_map(&mut ebpf, names::COUNTERS_MAP)
            .ok()
            .map(DropCounters::new);
        let needs_offsets = |what: &str| {
            offsets_error.as_ref().map(|e| {
                ProbeState::Unsupported(format!("{what} needs kernel struct offsets: {e}"))
            })
        };

        probes.load_cpu(&mut ebpf, &btf, offsets_error.as_deref());
        probes.load_faults(&mut ebpf);
        match needs_offsets("run-queue latency") {
            Some(state) => probes.set_family(RUNQ_PROVIDES, state),
            None => probes.load_runqueue(&mut ebpf, &btf),
        }
        let oom_variant = match &own_btf {
            Ok(b) => b
                .tracepoint_arg_is_pointer("mark_victim", 0)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        probes.load_events(
            &mut ebpf,
            &btf,
            oom_variant,
            needs_offsets("cgroup lifecycle"),
        );
        if config.run_stats {
            match RunStats::enable() {
                Ok(stats) => probes.run_stats = Some(stats),
                Err(e) => tracing::info!("bpf_stats unavailable, no per-program cost figures: {e}"),
            }
        }
        probes.ebpf = Some(ebpf);
        probes
    }

    fn load_cpu(&mut self, ebpf: &mut Ebpf, btf: &aya::Btf, offsets_error: Option<&str>) {
        let state = attach::btf_tracepoint(ebpf, names::SCHED_SWITCH_PROG, "sched_switch", btf);
        let state = match state {
            ProbeState::Active { .. } => match cpu_time_reader(ebpf) {
                Ok(reader) => {
                    self.cpu_time = Some(reader);
                    ProbeState::Active {
                        note: offsets_error.map(|e| {
                            format!("running intervals not visible until switch-out: {e}")
                        }),
                    }
                }
                Err(e) => ProbeState::Failed(e.to_string()),
            },
            other => other,
        };
        self.push(names::SCHED_SWITCH_PROG, CPU_PROVIDES, state);
    }

    fn load_faults(&mut self, ebpf: &mut Ebpf) {
        let cpus = match aya::util::online_cpus() {
            Ok(cpus) => cpus,
            Err((_, e)) => {
                self.set_family(
                    FAULTS_PROVIDES,
                    ProbeState::Failed(format!("reading the online CPUs: {e}")),
                );
                return;
            }
        };
        let mut any = false;
        for (prog, event) in [
            (names::PAGE_FAULTS_MINOR_PROG, SoftwareEvent::PageFaultsMin),
            (names::PAGE_FAULTS_MAJOR_PROG, SoftwareEvent::PageFaultsMaj),
        ] {
            let state = attach::software_event_per_cpu(ebpf, prog, event, &cpus);
            any |= state.is_active();
            self.push(prog, FAULTS_PROVIDES, state);
        }
        if any {
            match take_map(ebpf, names::FAULTS_MAP) {
                Ok(map) => self.faults = Some(FaultReader::new(map)),
                Err(e) => self.set_family(FAULTS_PROVIDES, ProbeState::Failed(e.to_string())),
            }
        }
    }

    fn load_runqueue(&mut self, ebpf: &mut Ebpf, btf: &aya::Btf) {
        let mut all = true;
        for (prog, tracepoint) in [
            (names::SCHED_WAKEUP_PROG, "sched_wakeup"),
            (names::SCHED_WAKEUP_NEW_PROG, "sched_wakeup_new"),
            (names::RUNQ_SWITCH_PROG, "sched_switch"),
        ] {
            let state = attach::btf_tracepoint(ebpf, prog, tracepoint, btf);
            all &= state.is_active();
            self.push(prog, RUNQ_PROVIDES, state);
        }
        // Without all three the waits are wrong, not just missing: report none.
        if all {
            match take_map(ebpf, names::RUNQ_LATENCY_MAP) {
                Ok(map) => self.runqueue = Some(RunqReader::new(map)),
                Err(e) => self.set_family(RUNQ_PROVIDES, ProbeState::Failed(e.to_string())),
            }
        }
    }

    fn load_events(
        &mut self,
        ebpf: &mut Ebpf,
        btf: &aya::Btf,
        oom_variant: Result<Option<bool>, String>,
        lifecycle_blocked: Option<ProbeState>,
    ) {
        let oom = match oom_variant {
            Ok(Some(true)) => {
                attach::btf_tracepoint(ebpf, names::OOM_VICTIM_TASK_PROG, "mark_victim", btf)
            }
            Ok(Some(false)) => {
                match attach::btf_tracepoint(ebpf, names::OOM_VICTIM_PID_PROG, "mark_victim", btf) {
                    ProbeState::Active { .. } => ProbeState::Active {
                        note: Some(
                            "pre-6.8 mark_victim(pid): cgroup and comm are the allocating task's"
                                .into(),
                        ),
                    },
                    other => other,
                }
            }
            Ok(None) => ProbeState::Unsupported("this kernel has no mark_victim tracepoint".into()),
            Err(e) => {
                ProbeState::Unsupported(format!("cannot tell the mark_victim signature: {e}"))
            }
        };
        let mut any = oom.is_active();
        self.push(OOM_STATUS_NAME, OOM_PROVIDES, oom);
        for (prog, tracepoint) in [
            (names::CGROUP_MKDIR_PROG, "cgroup_mkdir"),
            (names::CGROUP_RMDIR_PROG, "cgroup_rmdir"),
        ] {
            let state = match &lifecycle_blocked {
                Some(state) => state.clone(),
                None => attach::btf_tracepoint(ebpf, prog, tracepoint, btf),
            };
            any |= state.is_active();
            self.push(prog, LIFECYCLE_PROVIDES, state);
        }
        if any {
            match take_map(ebpf, names::EVENTS_MAP) {
                Ok(ring) => self.events = Some(EventReader::new(ring)),
                Err(e) => {
                    self.set_family(OOM_PROVIDES, ProbeState::Failed(e.to_string()));
                    self.set_family(LIFECYCLE_PROVIDES, ProbeState::Failed(e.to_string()));
                }
            }
        }
    }

    /// Whether cgroup creation/removal events are flowing (both programs active).
    pub fn lifecycle_active(&self) -> bool {
        self.events.is_some()
            && self
                .statuses
                .iter()
                .filter(|s| s.provides == LIFECYCLE_PROVIDES)
                .all(ProbeStatus::is_active)
    }

    /// Run count and time of every loaded program, when bpf_stats could be enabled.
    pub fn run_stats(&self) -> Vec<ProgramRunStats> {
        match (&self.run_stats, &self.ebpf) {
            (Some(stats), Some(ebpf)) => stats.read(ebpf),
            _ => Vec::new(),
        }
    }

    fn push(&mut self, name: &'static str, provides: &'static str, state: ProbeState) {
        self.statuses.retain(|s| s.name != name);
        self.statuses.push(ProbeStatus {
            name,
            provides,
            state,
        });
    }

    fn set_family(&mut self, provides: &'static str, state: ProbeState) {
        for &(name, p) in ALL.iter().filter(|(_, p)| *p == provides) {
            self.push(name, p, state.clone());
        }
    }

    fn set_all(&mut self, state: ProbeState) {
        for &(name, provides) in ALL {
            self.push(name, provides, state.clone());
        }
    }
}

fn take_map<T: TryFrom<Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, ProbeError> {
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(ProbeError::map(name))
}

fn cpu_time_reader(ebpf: &mut Ebpf) -> Result<CpuTimeReader, ProbeError> {
    Ok(CpuTimeReader::new(
        take_map(ebpf, names::CPU_TIME_MAP)?,
        take_map(ebpf, names::RUNNING_MAP)?,
    ))
}
