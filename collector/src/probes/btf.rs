//! Just enough of a BTF reader to find struct member offsets in the running kernel.
//!
//! Rust eBPF has no CO-RE, so the few task_struct fields the programs must follow are located
//! here, from `/sys/kernel/btf/vmlinux`, and handed to the programs as globals at load time.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_MIN_LEN: usize = 24;
const TYPE_HEADER_LEN: usize = 12;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read (the io error is the source, not in the message).
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The blob is not little-endian BTF or is cut short.
    #[error("not a BTF blob: {0}")]
    Malformed(&'static str),
    /// No struct of that name in the kernel's types.
    #[error("struct {name} not found in kernel BTF")]
    NoStruct { name: String },
    /// The struct (or a struct on the way) has no such member: this kernel lacks the field.
    #[error("member {member} not found in struct {name}")]
    NoMember { name: String, member: String },
    /// A bitfield, which a byte offset cannot address.
    #[error("{name}.{member} is a bitfield or not byte aligned")]
    Unaligned { name: String, member: String },
    /// The member exists with another size than the programs read.
    #[error("{name}.{member} has size {size}, expected {expected}")]
    UnexpectedSize {
        name: String,
        member: String,
        size: u32,
        expected: u32,
    },
}

/// A parsed BTF blob: type records indexed by id, and the string section.
pub struct Btf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Byte offset of each type record; index = type id (0 = void, unused).
    types: Vec<usize>,
    structs_by_name: HashMap<String, u32>,
    /// `btf_trace_<tracepoint>` typedefs: the prototypes tp_btf programs are checked against.
    trace_typedefs: HashMap<String, u32>,
}

#[derive(Clone, Copy)]
struct TypeRecord {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    size_or_type: u32,
    body: usize,
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if data.len() < HEADER_MIN_LEN || u16_at(0) != Some(BTF_MAGIC) {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is read)",
            ));
        }
        let hdr_len = read_u32(&data, 4)? as usize;
        let type_off = read_u32(&data, 8)? as usize;
        let type_len = read_u32(&data, 12)? as usize;
        let str_off = read_u32(&data, 16)? as usize;
        let str_len = read_u32(&data, 20)? as usize;
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if types_end > data.len() || strings.end > data.len() {
            return Err(BtfError::Malformed("section out of bounds"));
        }
        let mut btf = Self {
            data,
            strings,
            types: vec![0],
            structs_by_name: HashMap::new(),
            trace_typedefs: HashMap::new(),
        };
        let mut pos = types_start;
        while pos < types_end {
            let id = btf.types.len() as u32;
            btf.types.push(pos);
            let t = btf.record(id)?;
            if t.kind == KIND_STRUCT && t.name_off != 0 {
                let name = btf.string(t.name_off)?.to_owned();
                btf.structs_by_name.entry(name).or_insert(id);
            } else if t.kind == KIND_TYPEDEF
                && let Some(tp) = btf.string(t.name_off)?.strip_prefix("btf_trace_")
            {
                btf.trace_typedefs.insert(tp.to_owned(), id);
            }
            pos = t.body + trailing_len(t.kind, t.vlen)?;
        }
        Ok(btf)
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous struct/union members,
    /// and checking the member's size when `expected_size` is given. `member` may be a path
    /// into embedded structs: `se.sum_exec_runtime` is `task_struct.se` (a `struct
    /// sched_entity`) then its `sum_exec_runtime`.
    pub fn member_offset(
        &self,
        name: &str,
        member: &str,
        expected_size: Option<u32>,
    ) -> Result<u32, BtfError> {
        let mut id = *self
            .structs_by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct {
                name: name.to_owned(),
            })?;
        let no_member = || BtfError::NoMember {
            name: name.to_owned(),
            member: member.to_owned(),
        };
        let mut bits = 0;
        let mut type_id = id;
        for (i, part) in member.split('.').enumerate() {
            if i > 0 {
                // The previous part must be an embedded struct or union to step into.
                id = self.strip_modifiers(type_id)?;
                let kind = self.record(id)?.kind;
                if kind != KIND_STRUCT && kind != KIND_UNION {
                    return Err(no_member());
                }
            }
            let (part_bits, part_type) = self.find_member(id, part)?.ok_or_else(no_member)?;
            bits += part_bits;
            type_id = part_type;
        }
        if bits % 8 != 0 {
            return Err(BtfError::Unaligned {
                name: name.to_owned(),
                member: member.to_owned(),
            });
        }
        if let Some(expected) = expected_size {
            let size = self.size_of(type_id)?;
            if size != expected {
                return Err(BtfError::UnexpectedSize {
                    name: name.to_owned(),
                    member: member.to_owned(),
                    size,
                    expected,
                });
            }
        }
        Ok(bits / 8)
    }

    /// Whether argument `index` of raw tracepoint `tracepoint` is a pointer (e.g. `mark_victim`
    /// took an `int pid` before 6.8 and a `struct task_struct *` after). `None` when the kernel
    /// has no such tracepoint.
    pub fn tracepoint_arg_is_pointer(
        &self,
        tracepoint: &str,
        index: usize,
    ) -> Result<Option<bool>, BtfError> {
        let Some(&typedef) = self.trace_typedefs.get(tracepoint) else {
            return Ok(None);
        };
        // typedef -> pointer -> func proto(void *__data, args...)
        let ptr = self.record(self.strip_modifiers(typedef)?)?;
        if ptr.kind != KIND_PTR {
            return Err(BtfError::Malformed("btf_trace_ typedef is not a pointer"));
        }
        let proto = self.record(self.strip_modifiers(ptr.size_or_type)?)?;
        if proto.kind != KIND_FUNC_PROTO {
            return Err(BtfError::Malformed("btf_trace_ typedef is not a function"));
        }
        let param = index + 1;
        if param >= proto.vlen as usize {
            return Ok(Some(false));
        }
        let type_id = read_u32(&self.data, proto.body + param * 8 + 4)?;
        Ok(Some(
            self.record(self.strip_modifiers(type_id)?)?.kind == KIND_PTR,
        ))
    }

    /// (bit offset, member type id) of `member` in the struct/union `id`.
    fn find_member(&self, id: u32, member: &str) -> Result<Option<(u32, u32)>, BtfError> {
        let t = self.record(id)?;
        for i in 0..t.vlen as usize {
            let m = t.body + i * 12;
            let name_off = read_u32(&self.data, m)?;
            let type_id = read_u32(&self.data, m + 4)?;
            let raw_offset = read_u32(&self.data, m + 8)?;
            let bits = if t.kind_flag {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            };
            if t.kind_flag && raw_offset >> 24 != 0 {
                // A bitfield: only matches by name, and member_offset rejects it.
                if self.string(name_off)? == member {
                    return Ok(Some((bits | 1, type_id)));
                }
                continue;
            }
            if name_off != 0 {
                if self.string(name_off)? == member {
                    return Ok(Some((bits, type_id)));
                }
                continue;
            }
            // Anonymous struct/union: its members belong to the enclosing struct.
            let inner = self.strip_modifiers(type_id)?;
            let kind = self.record(inner)?.kind;
            if (kind == KIND_STRUCT || kind == KIND_UNION)
                && let Some((inner_bits, inner_type)) = self.find_member(inner, member)?
            {
                return Ok(Some((bits + inner_bits, inner_type)));
            }
        }
        Ok(None)
    }

    fn size_of(&self, type_id: u32) -> Result<u32, BtfError> {
        let t = self.record(self.strip_modifiers(type_id)?)?;
        Ok(match t.kind {
            KIND_PTR => 8,
            KIND_ARRAY => {
                // btf_array { type, index_type, nelems }
                let elem = read_u32(&self.data, t.body)?;
                let nelems = read_u32(&self.data, t.body + 8)?;
                self.size_of(elem)?.saturating_mul(nelems)
            }
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => t.size_or_type,
            _ => 0,
        })
    }

    fn strip_modifiers(&self, mut type_id: u32) -> Result<u32, BtfError> {
        for _ in 0..32 {
            let t = self.record(type_id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    type_id = t.size_or_type
                }
                _ => return Ok(type_id),
            }
        }
        Err(BtfError::Malformed("modifier chain too long"))
    }

    fn record(&self, id: u32) -> Result<TypeRecord, BtfError> {
        let pos = *self
            .types
            .get(id as usize)
            .filter(|_| id != 0)
            .ok_or(BtfError::Malformed("type id out of range"))?;
        let info = read_u32(&self.data, pos + 4)?;
        Ok(TypeRecord {
            name_off: read_u32(&self.data, pos)?,
            kind: (info >> 24) & 0x1f,
            vlen: info & 0xffff,
            kind_flag: info >> 31 == 1,
            size_or_type: read_u32(&self.data, pos + 8)?,
            body: pos + TYPE_HEADER_LEN,
        })
    }

    fn string(&self, off: u32) -> Result<&str, BtfError> {
        let start = self.strings.start + off as usize;
        let bytes = self
            .data
            .get(start..self.strings.end)
            .ok_or(BtfError::Malformed("string offset out of range"))?;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).map_err(|_| BtfError::Malformed("string not UTF-8"))
    }
}

fn read_u32(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

/// Bytes that follow the 12-byte type header for each kind.
fn trailing_len(kind: u32, vlen: u32) -> Result<usize, BtfError> {
    let vlen = vlen as usize;
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        0..=19 => 0,
        _ => return Err(BtfError::Malformed("unknown type kind")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: int, a pointer, an anonymous union, and a struct using them.
    fn sample_blob() -> Vec<u8> {
        let strings = b"\0int\0task\0pid\0cgroups\0inner\0flags\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        // 1: int (size 4) + encoding word
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: pointer to 1
        push(&[0, KIND_PTR << 24, 1]);
        // 3: anonymous union { int inner; } size 4
        push(&[0, (KIND_UNION << 24) | 1, 4, s("inner"), 1, 0]);
        // 4: struct task { int pid; <bitfield flags:3>; union {inner}; int *cgroups; } size 24
        push(&[s("task"), (KIND_STRUCT << 24) | 4 | (1 << 31), 24]);
        push(&[s("pid"), 1, 0]);
        push(&[s("flags"), 1, (3 << 24) | 32]);
        push(&[0, 3, 64]);
        push(&[s("cgroups"), 2, 128]);

        let mut blob = Vec::new();
        blob.extend(BTF_MAGIC.to_le_bytes());
        blob.extend([1u8, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend(w.to_le_bytes());
        }
        blob.extend(types);
        blob.extend(strings);
        blob
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(sample_blob()).unwrap();
        assert_eq!(btf.member_offset("task", "pid", Some(4)).unwrap(), 0);
        assert_eq!(btf.member_offset("task", "inner", Some(4)).unwrap(), 8);
        assert_eq!(btf.member_offset("task", "cgroups", Some(8)).unwrap(), 16);
    }

    #[test]
    fn errors_are_specific() {
        let btf = Btf::parse(sample_blob()).unwrap();
        assert!(matches!(
            btf.member_offset("nope", "pid", None),
            Err(BtfError::NoStruct { .. })
        ));
        assert!(matches!(
            btf.member_offset("task", "nope", None),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("task", "flags", None),
            Err(BtfError::Unaligned { .. })
        ));
        assert!(matches!(
            btf.member_offset("task", "pid", Some(8)),
            Err(BtfError::UnexpectedSize { .. })
        ));
    }

    #[test]
    fn tracepoint_prototypes_of_the_running_kernel() {
        let Ok(btf) = Btf::from_file(Path::new(super::super::offsets::VMLINUX_BTF)) else {
            eprintln!("SKIP: no kernel BTF here");
            return;
        };
        // sched_switch(bool preempt, struct task_struct *prev, ...): arg 0 is not a pointer,
        // arg 1 is.
        assert_eq!(
            btf.tracepoint_arg_is_pointer("sched_switch", 0).unwrap(),
            Some(false)
        );
        assert_eq!(
            btf.tracepoint_arg_is_pointer("sched_switch", 1).unwrap(),
            Some(true)
        );
        assert_eq!(
            btf.tracepoint_arg_is_pointer("no_such_tracepoint", 0)
                .unwrap(),
            None
        );
        // An array member: task_struct.comm is char[16].
        assert_eq!(
            btf.member_offset("task_struct", "comm", Some(16))
                .map(|_| ())
                .ok(),
            Some(())
        );
    }

    #[test]
    fn truncated_or_foreign_blobs_are_rejected() {
        let blob = sample_blob();
        for len in [0, 3, 23, 30, blob.len() - 1] {
            assert!(Btf::parse(blob[..len].to_vec()).is_err(), "len {len}");
        }
        assert!(Btf::parse(vec![0u8; 64]).is_err());
    }

    /// The running kernel's BTF, when this machine has it (all of ours do; readable without root).
    #[test]
    fn running_kernel_task_offsets() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("SKIP: no {}", path.display());
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        assert!(btf.member_offset("task_struct", "pid", Some(4)).unwrap() > 0);
        assert!(btf.member_offset("kernfs_node", "id", Some(8)).is_ok());
        // A path into an embedded struct: the offset of se plus that of sum_exec_runtime.
        let se = btf.member_offset("task_struct", "se", None).unwrap();
        let runtime = btf
            .member_offset("sched_entity", "sum_exec_runtime", Some(8))
            .unwrap();
        assert_eq!(
            btf.member_offset("task_struct", "se.sum_exec_runtime", Some(8))
                .unwrap(),
            se + runtime
        );
        assert!(matches!(
            btf.member_offset("task_struct", "pid.nope", None),
            Err(BtfError::NoMember { .. })
        ));
    }
}
