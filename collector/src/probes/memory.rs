//! Kernel memory of the probes' maps: what the kernel charges for each map now (its `memlock` in
//! `/proc/self/fdinfo`, charged to the collector's memory cgroup since 5.11), and what the same
//! maps would take on a node with more possible CPUs (per-CPU maps hold one value per possible
//! CPU, so a 2-CPU test machine hides what a 128-CPU node pays).

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Ebpf,
    maps::{Map, MapData, MapType},
};

/// One map's size and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapMemory {
    /// The object (probe family) it belongs to.
    pub object: &'static str,
    pub name: String,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// The kernel's own figure (`memlock` of the map's fdinfo); `None` when unreadable.
    pub kernel_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    Hash,
    PerCpuHash,
    Array,
    PerCpuArray,
    RingBuf,
    Queue,
    Other,
}

/// Page size the projections assume (x86-64, arm64 with 4 KiB pages).
const PAGE: u64 = 4096;
/// `sizeof(struct htab_elem)`, `sizeof(struct bucket)` and the lock count of the kernel's hash
/// maps (kernel/bpf/hashtab.c), used as `htab_map_mem_usage` uses them.
const HTAB_ELEM: u64 = 48;
const HTAB_BUCKET: u64 = 16;
const HTAB_LOCKS_PER_CPU: u64 = 8;

fn round8(v: u32) -> u64 {
    u64::from(v).div_ceil(8) * 8
}

impl MapMemory {
    /// Bytes the kernel would charge for this map with `cpus` possible CPUs, following its own
    /// accounting (`htab_map_mem_usage`, `array_map_mem_usage`, `ringbuf_map_mem_usage`) minus
    /// the fixed struct headers (a few hundred bytes).
    pub fn projected_bytes(&self, cpus: u32) -> u64 {
        let cpus = u64::from(cpus.max(1));
        let entries = u64::from(self.max_entries);
        let value = round8(self.value_size);
        match self.kind {
            MapKind::Hash | MapKind::PerCpuHash => {
                let percpu = self.kind == MapKind::PerCpuHash;
                let elem = HTAB_ELEM + round8(self.key_size) + if percpu { 8 } else { value };
                let buckets = entries.next_power_of_two() * HTAB_BUCKET;
                let locks = 4 * cpus * HTAB_LOCKS_PER_CPU;
                // Preallocated: every element up front, plus one spare per CPU for updates of
                // non-per-CPU maps.
                let elems = if percpu { entries } else { entries + cpus };
                let per_cpu_values = if percpu {
                    value * cpus * entries
                } else {
                    8 * cpus
                };
                buckets + locks + elem * elems + per_cpu_values
            }
            MapKind::Array => entries * value,
            MapKind::PerCpuArray => entries * 8 + entries * value * cpus,
            // The data pages, mapped twice but allocated once, plus the consumer and producer
            // pages and the page array.
            MapKind::RingBuf => entries + 2 * PAGE + (entries / PAGE + 2) * 8,
            // One spare element (queue_stack_map_alloc).
            MapKind::Queue => (entries + 1) * u64::from(self.value_size),
            MapKind::Other => self.kernel_bytes.unwrap_or(0),
        }
    }
}

/// Every map of a loaded object, with its kernel memory.
pub fn of_object(object: &'static str, ebpf: &Ebpf) -> Vec<MapMemory> {
    ebpf.maps()
        .filter_map(|(name, map)| {
            let data = map_data(map)?;
            let info = data.info().ok()?;
            let kind = match info.map_type() {
                Ok(MapType::Hash) => MapKind::Hash,
                Ok(MapType::PerCpuHash) => MapKind::PerCpuHash,
                Ok(MapType::Array) => MapKind::Array,
                Ok(MapType::PerCpuArray) => MapKind::PerCpuArray,
                Ok(MapType::RingBuf) => MapKind::RingBuf,
                Ok(MapType::Queue) => MapKind::Queue,
                _ => MapKind::Other,
            };
            Some(MapMemory {
                object,
                name: name.to_owned(),
                kind,
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                kernel_bytes: memlock(data),
            })
        })
        .collect()
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d)
        | Map::Queue(d) => Some(d),
        _ => None,
    }
}

/// The `memlock:` line of the map's `/proc/self/fdinfo` entry.
fn memlock(data: &MapData) -> Option<u64> {
    let fd = data.fd().as_fd().as_raw_fd();
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    parse_memlock(&text)
}

fn parse_memlock(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kind: MapKind, key: u32, value: u32, entries: u32) -> MapMemory {
        MapMemory {
            object: "sched",
            name: "M".into(),
            kind,
            key_size: key,
            value_size: value,
            max_entries: entries,
            kernel_bytes: None,
        }
    }

    #[test]
    fn per_cpu_maps_grow_with_the_cpu_count_and_shared_ones_do_not() {
        let percpu = map(MapKind::PerCpuArray, 4, 40, 8192);
        let shared = map(MapKind::Hash, 8, 8, 8192);
        let two = percpu.projected_bytes(2);
        let many = percpu.projected_bytes(128);
        // 40 B per cgroup per CPU dominates: about 40 MiB at 128 CPUs.
        assert!(many > 40 << 20 && many < 45 << 20, "{many}");
        assert!(two < 2 << 20, "{two}");
        let (s2, s128) = (shared.projected_bytes(2), shared.projected_bytes(128));
        assert!(s128 - s2 < 64 << 10, "{s2} -> {s128}");
        assert_eq!(
            map(MapKind::RingBuf, 0, 0, 1 << 20).projected_bytes(64),
            (1 << 20) + 2 * PAGE + (256 + 2) * 8
        );
        assert_eq!(
            map(MapKind::Queue, 0, 4, 8192).projected_bytes(128),
            8193 * 4
        );
        assert_eq!(
            map(MapKind::Array, 4, 320, 8192).projected_bytes(128),
            8192 * 320
        );
    }

    #[test]
    fn fdinfo_memlock() {
        let text = "pos:\t0\nflags:\t02000002\nmap_type:\t5\nmemlock:\t1318912\nmap_id:\t7\n";
        assert_eq!(parse_memlock(text), Some(1_318_912));
        assert_eq!(parse_memlock("pos: 0\n"), None);
    }
}
