//! The eBPF objects (built by build.rs from `collector-ebpf/src/bin/*.rs`) and loading one
//! of them: its maps sized from the configuration, its offsets written into its read-only data.

use aya::{Ebpf, EbpfLoader, Pod};

use collector_common::names;

use super::{ProbeError, family::Object, memory::MapMemory};

static SCHED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sched"));
static SCHED_SLOT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sched_slot"));
static OOM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oom"));
static LIFECYCLE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lifecycle"));
static NET: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/net"));

/// The compiled object; empty when built with `AYA_BUILD_SKIP=1`.
pub fn bytes(object: &Object) -> &'static [u8] {
    match object.name {
        names::SCHED_OBJECT => SCHED,
        names::SCHED_SLOT_OBJECT => SCHED_SLOT,
        names::OOM_OBJECT => OOM,
        names::LIFECYCLE_OBJECT => LIFECYCLE,
        names::NET_OBJECT => NET,
        _ => &[],
    }
}

/// Creates the maps of `object` (with `sizes` overriding `max_entries`) and writes `offsets`
/// into its offsets global (for objects that have one), and measures the maps' kernel memory. Programs are loaded and
/// attached one by one afterwards.
pub fn load<T: Pod>(
    object: &Object,
    btf: &aya::Btf,
    offsets: Option<&T>,
    sizes: &[(&'static str, u32)],
) -> Result<(Ebpf, Vec<MapMemory>), ProbeError> {
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(btf))
        // Task storage is a map type aya has no user-side wrapper for; only the programs use it.
        .allow_unsupported_maps();
    if let (Some(global), Some(offsets)) = (object.offsets_global, offsets) {
        loader.override_global(global, offsets, true);
    }
    for &(map, max_entries) in sizes {
        loader.map_max_entries(map, max_entries);
    }
    let ebpf = loader
        .load(bytes(object))
        .map_err(|source| ProbeError::Load {
            object: object.name,
            source,
        })?;
    let memory = super::memory::of_object(object.name, &ebpf);
    Ok((ebpf, memory))
}

#[cfg(test)]
mod tests {
    use ::object::{Object as _, ObjectSymbol as _};
    use aya_obj::Object as Parsed;

    use super::*;
    use crate::probes::family::Family;

    /// Without privileges: every program, map and global the loader asks for exists in the
    /// built objects, so a rename shows up here and not as a probe failure on a user's node;
    /// and an object holds no map beyond those.
    #[test]
    fn every_name_the_loader_uses_is_in_its_object_and_no_other_map() {
        for object in Family::ALL.iter().flat_map(|f| f.objects()) {
            let bytes = bytes(object);
            if bytes.is_empty() {
                eprintln!("SKIP: built with AYA_BUILD_SKIP=1, no eBPF objects");
                return;
            }
            let parsed = Parsed::parse(bytes).unwrap();
            for program in object.programs {
                assert!(
                    parsed.programs.contains_key(*program),
                    "{}: no program {program} in {:?}",
                    object.name,
                    parsed.programs.keys().collect::<Vec<_>>()
                );
            }
            for map in object.maps {
                assert!(
                    parsed.maps.contains_key(*map),
                    "{}: no map {map} in {:?}",
                    object.name,
                    parsed.maps.keys().collect::<Vec<_>>()
                );
            }
            // And nothing else: a map the object does not use is still created by the kernel,
            // and its memory (per CPU for the per-CPU maps) is charged to the collector.
            let unused: Vec<&String> = parsed
                .maps
                .keys()
                .filter(|m| !m.starts_with('.') && !object.maps.contains(&m.as_str()))
                .collect();
            assert!(
                unused.is_empty(),
                "{}: maps it does not use: {unused:?}",
                object.name
            );
            let Some(global) = object.offsets_global else {
                continue;
            };
            let elf = ::object::File::parse(bytes).unwrap();
            assert!(
                elf.symbols().any(|s| s.name() == Ok(global)),
                "{}: no global {global}",
                object.name,
            );
        }
    }
}
