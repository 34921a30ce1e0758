//! eBPF probes: loading, per-program status, and reading their maps.
//!
//! Four families, each its own eBPF object loaded and attached on its own, so the collector runs
//! with any subset and what did not come up says why in its [`ProbeStatus`]:
//! - [`Family::Sched`]: one `sched_switch` program charging each cgroup with the CPU time, page
//!   faults and run-queue waits the kernel accounts per task ([`sched`]);
//! - [`Family::Oom`]: OOM kills (`mark_victim`), through their own ring ([`events`]);
//! - [`Family::Lifecycle`]: cgroup creation and removal (`cgroup_mkdir`/`cgroup_rmdir`,
//!   cgroup2 only), through their own ring;
//! - [`Family::Net`]: bytes and packets by socket cgroup (`cgroup_skb` at the cgroup2 root,
//!   needs CAP_NET_ADMIN) ([`net`]).
//!
//! A status follows what happens at run time too: a family whose maps cannot be read turns
//! `Failed` until a read succeeds again.

pub mod attach;
pub mod btf;
pub mod events;
pub mod family;
pub mod memory;
pub mod net;
pub mod object;
pub mod offsets;
pub mod run_stats;
pub mod sched;
pub mod status;

use std::{collections::HashMap, path::PathBuf};

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray},
};
use collector_common::{DEFAULT_MAX_CGROUPS, TaskOffsets, counter, names};

pub use events::{CgroupEvent, EventRing, OomKillEvent};
pub use family::{Family, OOM_STATUS_NAME};
pub use memory::MapMemory;
pub use net::{NET_VALUES, NetReader, NetValues};
pub use run_stats::{ProgramRunStats, RunStats};
pub use sched::{RUNQ_VALUES, SCHED_VALUES, SchedReader, SchedValues};
pub use status::{ProbeState, ProbeStatus};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A map could not be read or converted (the aya error is the source).
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The object has no map of that name (a build that does not match this code).
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    /// `/sys/devices/system/cpu/possible` could not be read (per-CPU values need the count).
    #[error("reading the possible CPUs")]
    PossibleCpus(#[source] std::io::Error),
    /// The object's maps could not be created, or the object not parsed.
    #[error("creating the maps of the {object} object")]
    Load {
        object: &'static str,
        #[source]
        source: aya::EbpfError,
    },
}

impl ProbeError {
    fn map(name: &'static str) -> impl Fn(aya::maps::MapError) -> Self {
        move |source| Self::Map { name, source }
    }
}

/// An error and every source under it, on one line: the text a status carries.
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Load nothing: cgroupfs-only mode.
    pub disabled: bool,
    /// Capacity of the per-cgroup maps (counters and run-queue histograms).
    pub max_cgroups: u32,
    pub btf_path: PathBuf,
    /// Turn on the kernel's bpf_stats for per-program run counts and time. While on, every BPF
    /// program on the machine pays two clock reads per run, so it is off unless asked for.
    pub run_stats: bool,
    /// The cgroup2 root the `net` programs attach to; without it that family is Unsupported.
    pub cgroup2_root: Option<PathBuf>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            disabled: false,
            max_cgroups: DEFAULT_MAX_CGROUPS,
            btf_path: PathBuf::from(offsets::VMLINUX_BTF),
            run_stats: false,
            cgroup2_root: None,
        }
    }
}

/// What the programs could not record, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    /// A cgroup's first counts found the per-cgroup map full: that run's time, faults and wait
    /// were lost.
    pub cgroup_inserts: u64,
    /// A wait found the histogram map full (its totals still counted).
    pub runq_histograms: u64,
    pub oom_events: u64,
    pub lifecycle_events: u64,
    /// Lifecycle paths too long for an event (the tree is walked instead).
    pub truncated_paths: u64,
    /// Switch-outs of a task with no baseline (no task storage for it, and its CPU's slot named
    /// another task): that run was not charged.
    pub untracked_runs: u64,
    /// Task baselines that could not be created (task storage allocation failed).
    pub task_baselines: u64,
    /// Packets whose cgroup had no entry and got none (map full, or no memory): uncounted.
    pub net_inserts: u64,
}

/// The loaded programs and the readers of their maps. Any subset may be missing; `statuses`
/// says which and why.
pub struct Probes {
    pub sched: Option<SchedReader>,
    pub oom: Option<EventRing<OomKillEvent>>,
    pub lifecycle: Option<EventRing<CgroupEvent>>,
    pub net: Option<NetReader>,
    statuses: Vec<ProbeStatus>,
    /// Families whose maps failed their last read, with why.
    failing: HashMap<Family, String>,
    counters: Vec<(Family, PerCpuArray<MapData, u64>)>,
    memory: Vec<MapMemory>,
    run_stats: Option<RunStats>,
    /// Keeps programs attached and maps open for as long as the probes live.
    loaded: Vec<(Family, Ebpf)>,
}

impl Probes {
    fn none() -> Self {
        Self {
            sched: None,
            oom: None,
            lifecycle: None,
            net: None,
            statuses: Vec::new(),
            failing: HashMap::new(),
            counters: Vec::new(),
            memory: Vec::new(),
            run_stats: None,
            loaded: Vec::new(),
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
        if object::bytes(&family::SCHED).is_empty() {
            probes.set_all(ProbeState::Unsupported(
                "this binary was built with AYA_BUILD_SKIP=1 and has no eBPF programs".into(),
            ));
            return probes;
        }
        let btf = match aya::Btf::from_sys_fs() {
            Ok(btf) => btf,
            Err(e) => {
                probes.set_all(ProbeState::Unsupported(format!(
                    "no kernel BTF ({}): {}",
                    config.btf_path.display(),
                    error_text(&e)
                )));
                return probes;
            }
        };
        // Parsed once: struct offsets and tracepoint prototypes both come from it.
        let kernel = match btf::Btf::from_file(&config.btf_path) {
            Ok(kernel) => kernel,
            Err(e) => {
                probes.set_all(ProbeState::Unsupported(format!(
                    "cannot read the kernel's struct offsets: {}",
                    error_text(&e)
                )));
                return probes;
            }
        };
        for family in Family::ALL {
            let loaded = match family {
                Family::Sched => probes.load_sched(&btf, &kernel, config),
                Family::Oom => probes.load_oom(&btf, &kernel),
                Family::Lifecycle => probes.load_lifecycle(&btf, &kernel),
                Family::Net => probes.load_net(&btf, config),
            };
            match loaded {
                Ok((mut ebpf, memory)) => {
                    probes.memory.extend(memory);
                    if let Ok(c) = take_map(&mut ebpf, names::COUNTERS_MAP) {
                        probes.counters.push((family, c));
                    }
                    probes.loaded.push((family, ebpf));
                }
                Err(state) => probes.set_family(family, state),
            }
        }
        if config.run_stats {
            match RunStats::enable() {
                Ok(stats) => probes.run_stats = Some(stats),
                Err(e) => tracing::info!(
                    "bpf_stats unavailable, no per-program cost figures: {}",
                    error_text(&e)
                ),
            }
        }
        probes
    }

    fn load_sched(
        &mut self,
        btf: &aya::Btf,
        kernel: &btf::Btf,
        config: &ProbeConfig,
    ) -> Result<(Ebpf, Vec<MapMemory>), ProbeState> {
        let offsets = offsets::sched_offsets(kernel).map_err(|e| {
            ProbeState::Unsupported(format!("needs kernel struct offsets: {}", error_text(&e)))
        })?;
        // Per-task baselines in task storage first (5.13+); per-CPU ones otherwise.
        let (ebpf, memory, reader, object_note) =
            match self.load_sched_object(&family::SCHED, btf, &offsets, config) {
                Ok((ebpf, memory, reader)) => (ebpf, memory, reader, None),
                Err(with_tasks) => {
                    let (ebpf, memory, reader) =
                        self.load_sched_object(&family::SCHED_SLOT, btf, &offsets, config)?;
                    let why = match &with_tasks {
                        ProbeState::Active { .. } => String::new(),
                        ProbeState::Unsupported(why) | ProbeState::Failed(why) => why.clone(),
                    };
                    (
                        ebpf,
                        memory,
                        reader,
                        Some(format!(
                            "per-CPU baselines only (per-task ones need task storage in tracing \
                         programs, Linux 5.13+: {why})"
                        )),
                    )
                }
            };
        let runq = reader.counts_runq();
        self.sched = Some(reader);
        let runq_note = (!runq)
            .then_some("no run-queue latency: this kernel keeps no sched_info (CONFIG_SCHED_INFO)");
        let note = match (object_note, runq_note) {
            (None, None) => None,
            (Some(a), None) => Some(a),
            (None, Some(b)) => Some(b.to_owned()),
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        };
        self.push(
            names::SCHED_SWITCH_PROG,
            Family::Sched,
            ProbeState::Active { note },
        );
        Ok((ebpf, memory))
    }

    /// One `sched` object: maps (with every row free before any program runs), `sched_switch`,
    /// and where the object has them the fork hook and the one-off task iterator that give tasks
    /// their baselines.
    fn load_sched_object(
        &self,
        object: &family::Object,
        btf: &aya::Btf,
        offsets: &collector_common::SchedOffsets,
        config: &ProbeConfig,
    ) -> Result<(Ebpf, Vec<MapMemory>, SchedReader), ProbeState> {
        let sizes = [
            names::CGROUP_ROWS_MAP,
            names::ROW_OWNERS_MAP,
            names::FREE_ROWS_MAP,
            names::CGROUP_COUNTERS_MAP,
            names::RUNQ_HISTOGRAMS_MAP,
        ]
        .map(|map| (map, config.max_cgroups));
        let (mut ebpf, memory) = object::load(object, btf, Some(offsets), &sizes)
            .map_err(|e| attach::classify(&e, "loading"))?;
        let reader = SchedReader::new(&mut ebpf, offsets.has_sched_info != 0)
            .map_err(|e| ProbeState::Failed(error_text(&e)))?;
        let state =
            attach::btf_tracepoint(&mut ebpf, names::SCHED_SWITCH_PROG, "sched_switch", btf);
        if !state.is_active() {
            return Err(state);
        }
        if object.programs.contains(&names::SCHED_FORK_PROG) {
            let state = attach::btf_tracepoint(
                &mut ebpf,
                names::SCHED_FORK_PROG,
                "sched_process_fork",
                btf,
            );
            if !state.is_active() {
                return Err(state);
            }
            // After both hooks are in place: tasks born from now on have a baseline from birth.
            attach::run_task_iterator(&mut ebpf, names::SCHED_TASKS_ITER, btf)?;
        }
        Ok((ebpf, memory, reader))
    }

    fn load_oom(
        &mut self,
        btf: &aya::Btf,
        kernel: &btf::Btf,
    ) -> Result<(Ebpf, Vec<MapMemory>), ProbeState> {
        let takes_task = match kernel.tracepoint_arg_is_pointer("mark_victim", 0) {
            Ok(Some(pointer)) => pointer,
            Ok(None) => {
                return Err(ProbeState::Unsupported(
                    "this kernel has no mark_victim tracepoint".into(),
                ));
            }
            Err(e) => {
                return Err(ProbeState::Unsupported(format!(
                    "cannot tell the mark_victim signature: {}",
                    error_text(&e)
                )));
            }
        };
        // The pid variant reads no kernel struct: its offsets stay unset.
        let offsets = if takes_task {
            offsets::task_offsets(kernel).map_err(|e| {
                ProbeState::Unsupported(format!("needs kernel struct offsets: {}", error_text(&e)))
            })?
        } else {
            TaskOffsets::default()
        };
        let (mut ebpf, memory) = object::load(&family::OOM, btf, Some(&offsets), &[])
            .map_err(|e| attach::classify(&e, "loading"))?;
        let (program, note) = if takes_task {
            (names::OOM_VICTIM_TASK_PROG, None)
        } else {
            (
                names::OOM_VICTIM_PID_PROG,
                Some("pre-6.8 mark_victim(pid): cgroup and comm are the allocating task's".into()),
            )
        };
        let state = attach::btf_tracepoint(&mut ebpf, program, "mark_victim", btf);
        if !state.is_active() {
            return Err(state);
        }
        let ring = take_map(&mut ebpf, names::OOM_EVENTS_MAP)
            .map_err(|e| ProbeState::Failed(error_text(&e)))?;
        self.oom = Some(events::oom_ring(ring));
        self.push(OOM_STATUS_NAME, Family::Oom, ProbeState::Active { note });
        Ok((ebpf, memory))
    }

    fn load_lifecycle(
        &mut self,
        btf: &aya::Btf,
        kernel: &btf::Btf,
    ) -> Result<(Ebpf, Vec<MapMemory>), ProbeState> {
        let offsets = offsets::cgroup_offsets(kernel).map_err(|e| {
            ProbeState::Unsupported(format!("needs kernel struct offsets: {}", error_text(&e)))
        })?;
        let (mut ebpf, memory) = object::load(&family::LIFECYCLE, btf, Some(&offsets), &[])
            .map_err(|e| attach::classify(&e, "loading"))?;
        let states = [
            (names::CGROUP_MKDIR_PROG, "cgroup_mkdir"),
            (names::CGROUP_RMDIR_PROG, "cgroup_rmdir"),
        ]
        .map(|(program, tracepoint)| {
            (
                program,
                attach::btf_tracepoint(&mut ebpf, program, tracepoint, btf),
            )
        });
        // Creations without removals (or the reverse) would keep a wrong tree: both or none.
        if let Some((_, failed)) = states.iter().find(|(_, s)| !s.is_active()) {
            return Err(failed.clone());
        }
        let ring = take_map(&mut ebpf, names::LIFECYCLE_EVENTS_MAP)
            .map_err(|e| ProbeState::Failed(error_text(&e)))?;
        self.lifecycle = Some(events::lifecycle_ring(ring));
        for (program, state) in states {
            self.push(program, Family::Lifecycle, state);
        }
        Ok((ebpf, memory))
    }

    fn load_net(
        &mut self,
        btf: &aya::Btf,
        config: &ProbeConfig,
    ) -> Result<(Ebpf, Vec<MapMemory>), ProbeState> {
        let root = config
            .cgroup2_root
            .as_deref()
            .ok_or_else(|| ProbeState::Unsupported("no cgroup2 mount to attach to".into()))?;
        let (ebpf, memory, reader) = net::load(btf, root, config.max_cgroups)?;
        self.net = Some(reader);
        for name in net::STATUS_NAMES {
            self.push(name, Family::Net, ProbeState::Active { note: None });
        }
        Ok((ebpf, memory))
    }

    /// Every program's status, run-time read failures included, in report order.
    pub fn statuses(&self) -> Vec<ProbeStatus> {
        let mut out = self.statuses.clone();
        out.sort_by_key(|s| {
            Family::ALL
                .iter()
                .position(|f| f.status_names().contains(&s.name))
                .unwrap_or(usize::MAX)
        });
        for status in &mut out {
            if let Some(why) = self.failing_family_of(status.name)
                && status.is_active()
            {
                status.state = ProbeState::Failed(format!("reading its maps failed: {why}"));
            }
        }
        out
    }

    fn failing_family_of(&self, name: &str) -> Option<&String> {
        Family::ALL
            .iter()
            .find(|f| f.status_names().contains(&name))
            .and_then(|f| self.failing.get(f))
    }

    /// Records the outcome of a read of `family`'s maps: a failure turns its status `Failed`
    /// (logged once, when it starts), a success restores it.
    pub fn read_outcome(&mut self, family: Family, outcome: Result<(), &ProbeError>) {
        match outcome {
            Ok(()) => {
                if self.failing.remove(&family).is_some() {
                    tracing::info!(family = family.name(), "probe maps readable again");
                }
            }
            Err(e) => {
                let why = error_text(e);
                if !self.failing.contains_key(&family) {
                    tracing::warn!(family = family.name(), "reading probe maps failed: {why}");
                }
                self.failing.insert(family, why);
            }
        }
    }

    /// Whether cgroup creation/removal events are flowing (both programs active).
    pub fn lifecycle_active(&self) -> bool {
        self.lifecycle.is_some()
    }

    /// What the programs could not record, from each object's counters.
    pub fn drops(&self) -> Drops {
        let mut d = Drops::default();
        for (family, map) in &self.counters {
            let sum = |i| map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
            match family {
                Family::Sched => {
                    d.cgroup_inserts = sum(counter::CGROUP_INSERT_FAILED);
                    d.runq_histograms = sum(counter::RUNQ_BUCKETS_INSERT_FAILED);
                    d.untracked_runs = sum(counter::UNTRACKED_RUNS);
                    d.task_baselines = sum(counter::TASK_BASELINE_FAILED);
                }
                Family::Oom => d.oom_events = sum(counter::EVENTS_DROPPED),
                Family::Lifecycle => {
                    d.lifecycle_events = sum(counter::EVENTS_DROPPED);
                    d.truncated_paths = sum(counter::PATH_TRUNCATED);
                }
                Family::Net => d.net_inserts = sum(counter::NET_INSERT_FAILED),
            }
        }
        d
    }

    /// Every map of the loaded objects, with its kernel memory.
    pub fn map_memory(&self) -> &[MapMemory] {
        &self.memory
    }

    /// Run count and time of every loaded program, when bpf_stats is on.
    pub fn run_stats(&self) -> Vec<ProgramRunStats> {
        match &self.run_stats {
            Some(stats) => self
                .loaded
                .iter()
                .flat_map(|(_, e)| stats.read(e))
                .collect(),
            None => Vec::new(),
        }
    }

    fn push(&mut self, name: &'static str, family: Family, state: ProbeState) {
        self.statuses.retain(|s| s.name != name);
        self.statuses.push(ProbeStatus {
            name,
            provides: family.provides(),
            state,
        });
    }

    fn set_family(&mut self, family: Family, state: ProbeState) {
        for &name in family.status_names() {
            self.push(name, family, state.clone());
        }
    }

    fn set_all(&mut self, state: ProbeState) {
        for family in Family::ALL {
            self.set_family(family, state.clone());
        }
    }
}

pub(crate) fn take_map<T: TryFrom<Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, ProbeError> {
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(ProbeError::map(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroupfs_only() -> Probes {
        Probes::load(&ProbeConfig {
            disabled: true,
            ..ProbeConfig::default()
        })
    }

    #[test]
    fn every_program_reports_once_in_family_order() {
        let names: Vec<_> = cgroupfs_only().statuses().iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                names::SCHED_SWITCH_PROG,
                OOM_STATUS_NAME,
                names::CGROUP_MKDIR_PROG,
                names::CGROUP_RMDIR_PROG,
                names::NET_INGRESS_PROG,
                names::NET_EGRESS_PROG,
            ]
        );
    }

    #[test]
    fn a_failing_read_turns_an_active_family_failed_until_it_reads_again() {
        let mut probes = cgroupfs_only();
        probes.push(
            names::SCHED_SWITCH_PROG,
            Family::Sched,
            ProbeState::Active { note: None },
        );
        let error = ProbeError::MissingMap("CGROUP_COUNTERS");
        probes.read_outcome(Family::Sched, Err(&error));
        let sched = |p: &Probes| p.statuses().into_iter().find(|s| s.name == "sched_switch");
        match sched(&probes).unwrap().state {
            ProbeState::Failed(why) => assert!(why.contains("CGROUP_COUNTERS"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Families that were never active keep their load-time reason.
        probes.read_outcome(Family::Oom, Err(&error));
        assert!(matches!(
            probes
                .statuses()
                .into_iter()
                .find(|s| s.name == OOM_STATUS_NAME)
                .unwrap()
                .state,
            ProbeState::Unsupported(_)
        ));
        probes.read_outcome(Family::Sched, Ok(()));
        assert!(sched(&probes).unwrap().is_active());
    }
}
