//! User side of the `sched` family: per-cgroup CPU time, page faults and run-queue waits, as the
//! kernel accounts them per task, plus what the tasks on the CPUs right now have done since they
//! were switched in.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues, Queue},
};
use collector_common::{CgroupCounters, OnCpu, RUNQ_BUCKETS, RunqBuckets, names};

use super::{ProbeError, take_map};

/// One cgroup's own values in one flat array, so the hierarchy code treats them like any other
/// counters: CPU ns, minor faults, major faults, then the run-queue histogram in the layout of
/// [`RUNQ_VALUES`] (log2 buckets, total wait ns, waits).
pub const SCHED_VALUES: usize = 3 + RUNQ_VALUES;
pub const CPU_NS: usize = 0;
pub const MINOR_FAULTS: usize = 1;
pub const MAJOR_FAULTS: usize = 2;
/// Where the run-queue part starts.
pub const RUNQ: usize = 3;
/// Histogram buckets, then total wait ns, then count.
pub const RUNQ_VALUES: usize = RUNQ_BUCKETS + 2;
const WAIT_NS: usize = RUNQ + RUNQ_BUCKETS;
const WAITS: usize = WAIT_NS + 1;

pub type SchedValues = [u64; SCHED_VALUES];

/// One read of the maps.
#[derive(Debug, Default)]
pub struct SchedRead {
    /// Each cgroup's own values (its tasks only, not its descendants), live runs included.
    pub own: HashMap<u64, SchedValues>,
    /// Cgroups holding a row of the per-cgroup maps.
    pub entries: usize,
    /// Running tasks whose run so far was added from `/proc/<tid>/schedstat`.
    pub live: usize,
}

pub struct SchedReader {
    /// cgroup id -> its row in `counters` and `histograms`.
    rows: BpfHashMap<MapData, u64, u32>,
    /// row -> the cgroup id it belongs to (0: free).
    owners: Array<MapData, u64>,
    free: Queue<MapData, u32>,
    counters: PerCpuArray<MapData, CgroupCounters>,
    histograms: Array<MapData, RunqBuckets>,
    on_cpu: PerCpuArray<MapData, OnCpu>,
    /// Rows of cgroups taken since the last read: zeroed and handed back to the program at the
    /// next read, once no program can still be adding to them (a run of one lasts microseconds).
    freed: Vec<u32>,
    /// Possible CPUs: the length of a per-CPU value.
    cpus: usize,
    /// Whether this kernel times run-queue waits (`sched_info`).
    runq: bool,
    proc_root: PathBuf,
    /// Each CPU's switch count at the last read: unchanged means a run that is still going.
    last_switches: Vec<u64>,
}

impl SchedReader {
    /// Takes the family's maps out of a loaded (not yet attached) object and frees every row.
    pub fn new(ebpf: &mut Ebpf, runq: bool) -> Result<Self, ProbeError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| ProbeError::PossibleCpus(e))?;
        let mut free: Queue<MapData, u32> = take_map(ebpf, names::FREE_ROWS_MAP)?;
        for row in 0..free.capacity() {
            free.push(row, 0)
                .map_err(ProbeError::map(names::FREE_ROWS_MAP))?;
        }
        Ok(Self {
            rows: take_map(ebpf, names::CGROUP_ROWS_MAP)?,
            owners: take_map(ebpf, names::ROW_OWNERS_MAP)?,
            free,
            counters: take_map(ebpf, names::CGROUP_COUNTERS_MAP)?,
            histograms: take_map(ebpf, names::RUNQ_HISTOGRAMS_MAP)?,
            on_cpu: take_map(ebpf, names::ON_CPU_MAP)?,
            freed: Vec::new(),
            cpus,
            runq,
            proc_root: PathBuf::from("/proc"),
            last_switches: Vec::new(),
        })
    }

    /// Whether run-queue waits are counted on this kernel.
    pub fn counts_runq(&self) -> bool {
        self.runq
    }

    /// The committed counts first, then the tasks on the CPUs: a switch between the two reads
    /// can only make this read a little low (never count a run twice), and the caller keeps
    /// counters monotonic.
    pub fn read(&mut self) -> Result<SchedRead, ProbeError> {
        self.release_freed();
        let mut read = SchedRead::default();
        for entry in self.rows.iter() {
            let (id, row) = entry.map_err(ProbeError::map(names::CGROUP_ROWS_MAP))?;
            let v = read.own.entry(id).or_insert([0; SCHED_VALUES]);
            self.add_row(v, row)?;
            read.entries += 1;
        }
        let slots = self
            .on_cpu
            .get(&0, 0)
            .map_err(ProbeError::map(names::ON_CPU_MAP))?;
        self.last_switches.resize(slots.len(), u64::MAX);
        for (cpu, slot) in slots.iter().enumerate() {
            let long_run = self.last_switches[cpu] == slot.switches;
            self.last_switches[cpu] = slot.switches;
            if slot.tid == 0 || slot.cgroup_id == 0 {
                continue;
            }
            let Some(run) = running(&self.proc_root, slot.tid, &slot.base, long_run) else {
                continue;
            };
            let v = read.own.entry(slot.cgroup_id).or_insert([0; SCHED_VALUES]);
            add_counters(v, &run);
            if self.runq && run.waits == 1 {
                v[RUNQ + bucket(run.wait_ns)] += 1;
            }
            read.live += 1;
        }
        Ok(read)
    }

    /// Adds the values at `row` to `v`.
    fn add_row(&self, v: &mut SchedValues, row: u32) -> Result<(), ProbeError> {
        let per_cpu = self
            .counters
            .get(&row, 0)
            .map_err(ProbeError::map(names::CGROUP_COUNTERS_MAP))?;
        for c in per_cpu.iter() {
            add_counters(v, c);
        }
        if self.runq {
            let h = self
                .histograms
                .get(&row, 0)
                .map_err(ProbeError::map(names::RUNQ_HISTOGRAMS_MAP))?;
            add_buckets(v, &h);
        }
        Ok(())
    }

    /// Deletes a removed cgroup's entry and returns its final committed values. Its row goes
    /// back to the program at the next read.
    pub fn take(&mut self, id: u64) -> SchedValues {
        let mut v = [0; SCHED_VALUES];
        let Ok(row) = self.rows.get(&id, 0) else {
            return v;
        };
        // What the row held is its final record; an error leaves it at what was read.
        let _ = self.add_row(&mut v, row);
        // Unowned first: a task still caching the row resolves again (to a fresh row, which the
        // hierarchy then expires like any unknown cgroup's) instead of adding to this one.
        let _ = self.owners.set(row, 0, 0);
        // Already gone is fine: nothing to free.
        let _ = self.rows.remove(&id);
        self.freed.push(row);
        v
    }

    /// Zeroes the rows freed at the last read and hands them back to the program. A row that
    /// cannot be zeroed stays out of use (and is retried), never handed back dirty.
    fn release_freed(&mut self) {
        let mut freed = std::mem::take(&mut self.freed);
        freed.retain(|&row| self.recycle(row).is_err());
        self.freed = freed;
    }

    /// Zeroes one row's values and pushes it onto the free queue.
    fn recycle(&mut self, row: u32) -> Result<(), ProbeError> {
        let zero = PerCpuValues::try_from(vec![CgroupCounters::default(); self.cpus])
            .map_err(ProbeError::PossibleCpus)?;
        self.counters
            .set(row, zero, 0)
            .map_err(ProbeError::map(names::CGROUP_COUNTERS_MAP))?;
        self.histograms
            .set(row, RunqBuckets::default(), 0)
            .map_err(ProbeError::map(names::RUNQ_HISTOGRAMS_MAP))?;
        self.free
            .push(row, 0)
            .map_err(ProbeError::map(names::FREE_ROWS_MAP))
    }
}

fn add_counters(v: &mut SchedValues, c: &CgroupCounters) {
    for (i, x) in [
        (CPU_NS, c.cpu_ns),
        (MINOR_FAULTS, c.minor_faults),
        (MAJOR_FAULTS, c.major_faults),
        (WAIT_NS, c.wait_ns),
        (WAITS, c.waits),
    ] {
        v[i] = v[i].saturating_add(x);
    }
}

fn add_buckets(v: &mut SchedValues, h: &RunqBuckets) {
    for (o, b) in v[RUNQ..WAIT_NS].iter_mut().zip(h.buckets.iter()) {
        *o = o.saturating_add(*b);
    }
}

/// The log2 bucket of a wait, as the program picks it.
fn bucket(wait_ns: u64) -> usize {
    (wait_ns.max(1).ilog2() as usize).min(RUNQ_BUCKETS - 1)
}

/// What task `tid` has done since `base`, from the kernel's own per-task counters in
/// `/proc/<tid>/task/<tid>/schedstat` (run time, run delay, arrivals) and, for a run that was
/// already going at the last read, `…/stat` (faults; the thread's own, where `/proc/<tid>/stat`
/// would sum its whole process). `None` when the task is gone or its files are not ours to read
/// (another PID namespace).
fn running(
    proc_root: &Path,
    tid: u32,
    base: &CgroupCounters,
    long_run: bool,
) -> Option<CgroupCounters> {
    let tid = tid.to_string();
    let dir = proc_root.join(&tid).join("task").join(&tid);
    let schedstat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
    let [cpu_ns, wait_ns, waits] = parse_schedstat(&schedstat)?;
    // A counter below the slot's baseline is another task with a reused id: skip it.
    let mut run = CgroupCounters {
        cpu_ns: cpu_ns.checked_sub(base.cpu_ns)?,
        wait_ns: wait_ns.checked_sub(base.wait_ns)?,
        waits: waits.checked_sub(base.waits)?,
        ..CgroupCounters::default()
    };
    if long_run
        && let Ok(stat) = std::fs::read_to_string(dir.join("stat"))
        && let Some((minor, major)) = parse_stat_faults(&stat)
    {
        run.minor_faults = minor.saturating_sub(base.minor_faults);
        run.major_faults = major.saturating_sub(base.major_faults);
    }
    Some(run)
}

/// `/proc/<tid>/schedstat`: "sum_exec_runtime run_delay pcount".
fn parse_schedstat(text: &str) -> Option<[u64; 3]> {
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// minflt and majflt (fields 10 and 12) of `/proc/<tid>/stat`, counted after the command name,
/// which may itself hold spaces and parentheses.
fn parse_stat_faults(text: &str) -> Option<(u64, u64)> {
    let after_comm = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name: minflt is field 10, majflt field 12.
    let mut fields = after_comm.split_ascii_whitespace().skip(10 - 3);
    let minor = fields.next()?.parse().ok()?;
    let major = fields.nth(1)?.parse().ok()?;
    Some((minor, major))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_counter_files_parse() {
        assert_eq!(
            parse_schedstat("123456789 2000 7\n"),
            Some([123_456_789, 2000, 7])
        );
        assert_eq!(parse_schedstat("12 x 3"), None);
        assert_eq!(parse_schedstat(""), None);
        let stat = "4242 (my (odd) name) R 1 4242 4242 0 -1 4194304 1500 0 3 0 5 6 0 0 20 0 1 0";
        assert_eq!(parse_stat_faults(stat), Some((1500, 3)));
        assert_eq!(parse_stat_faults("4242 (cut"), None);
    }

    #[test]
    fn a_running_task_is_topped_up_from_its_own_counters() {
        let proc_root = tempfile::tempdir().unwrap();
        let task = proc_root.path().join("77/task/77");
        std::fs::create_dir_all(&task).unwrap();
        std::fs::write(task.join("schedstat"), "5000000 900 4\n").unwrap();
        std::fs::write(
            task.join("stat"),
            "77 (burn) R 1 77 77 0 -1 0 130 0 2 0 5 6 0 0 20 0 1 0\n",
        )
        .unwrap();
        let base = CgroupCounters {
            cpu_ns: 1_000_000,
            minor_faults: 100,
            major_faults: 1,
            wait_ns: 400,
            waits: 3,
        };
        let run = running(proc_root.path(), 77, &base, false).unwrap();
        assert_eq!((run.cpu_ns, run.wait_ns, run.waits), (4_000_000, 500, 1));
        assert_eq!(
            (run.minor_faults, run.major_faults),
            (0, 0),
            "short run: faults later"
        );
        let run = running(proc_root.path(), 77, &base, true).unwrap();
        assert_eq!((run.minor_faults, run.major_faults), (30, 1));
        // A reused id whose counters are below the baseline is not this task.
        let newer = CgroupCounters {
            cpu_ns: 9_000_000,
            ..base
        };
        assert!(running(proc_root.path(), 77, &newer, false).is_none());
        assert!(running(proc_root.path(), 78, &base, false).is_none());
    }

    #[test]
    fn buckets_are_the_programs_log2() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(1023), 9);
        assert_eq!(bucket(1024), 10);
        assert_eq!(bucket(u64::MAX), RUNQ_BUCKETS - 1);
    }
}
