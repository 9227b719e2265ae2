//! Just enough of a BTF reader to find member offsets, type sizes, enum names and tracepoint arities in
//! the running kernel's `/sys/kernel/btf/vmlinux` (aya's BTF keeps its type details private).
//!
//! Format: `include/uapi/linux/btf.h` (a header, then the type section, then the string section).

use std::{borrow::Cow, collections::HashMap};

/// Where the running kernel publishes its BTF (needs CONFIG_DEBUG_INFO_BTF).
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why BTF could not be read or lacks something.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The data is not BTF this reader understands.
    #[error("malformed BTF: {0}")]
    Format(String),
    /// A type or member the programs need is not in this kernel's BTF, or not in a readable form.
    #[error("kernel BTF: {0}")]
    Layout(String),
}

/// A member found by [`Btf::member`]: its byte offset from the start of the outer struct and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Byte offset from the start of the struct the path starts at.
    pub offset: u32,
    /// Size of the member's type in bytes.
    pub size: u32,
}

/// One type's fixed part and the bytes of its kind-specific tail.
#[derive(Clone, Copy)]
struct Type<'a> {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    tail: &'a [u8],
}

/// Parsed BTF: the raw bytes and the start of every type in them.
pub struct Btf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Byte position of type id `i + 1` in `data` (id 0 is void).
    types: Vec<usize>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// Bytes of the kind-specific data that follow a type's 12-byte fixed part.
fn tail_len(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC | KIND_FLOAT
        | KIND_TYPE_TAG => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        k => return Err(BtfError::Format(format!("unknown type kind {k}"))),
    })
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Btf::from_file(VMLINUX)
    }

    /// Reads and parses a raw BTF file.
    pub fn from_file(path: &str) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.into(),
            source,
        })?;
        Btf::parse(data)
    }

    /// Parses raw little-endian BTF.
    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        let bad = |what: &str| BtfError::Format(what.to_string());
        if data.len() < HEADER_MIN {
            return Err(bad("shorter than its header"));
        }
        if u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(bad("bad magic (not little-endian BTF)"));
        }
        let field = |at| {
            u32_at(&data, at)
                .map(|v| v as usize)
                .ok_or_else(|| bad("truncated header"))
        };
        let hdr_len = field(4)?;
        let (type_off, type_len, str_off, str_len) = (field(8)?, field(12)?, field(16)?, field(20)?);
        let types_at = hdr_len
            .checked_add(type_off)
            .ok_or_else(|| bad("type section offset"))?;
        let types_end = types_at
            .checked_add(type_len)
            .ok_or_else(|| bad("type section length"))?;
        let strings_at = hdr_len
            .checked_add(str_off)
            .ok_or_else(|| bad("string section offset"))?;
        let strings_end = strings_at
            .checked_add(str_len)
            .ok_or_else(|| bad("string section length"))?;
        if types_end > data.len() || strings_end > data.len() {
            return Err(bad("sections run past the end of the data"));
        }
        let mut types = Vec::new();
        let mut at = types_at;
        while at < types_end {
            let info = u32_at(&data, at + 4).ok_or_else(|| bad("truncated type"))?;
            let next = at + 12 + tail_len((info >> 24) & 0x1f, (info & 0xffff) as usize)?;
            if next > types_end {
                return Err(bad("a type runs past the type section"));
            }
            types.push(at);
            at = next;
        }
        Ok(Btf {
            data,
            strings: strings_at..strings_end,
            types,
        })
    }

    fn ty(&self, id: u32) -> Result<Type<'_>, BtfError> {
        let at = *id
            .checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .ok_or_else(|| BtfError::Format(format!("type id {id} out of range")))?;
        let word = |i: usize| u32_at(&self.data, at + 4 * i).unwrap_or(0);
        let info = word(1);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let start = at + 12;
        let tail = &self.data[start..start + tail_len(kind, vlen)?];
        Ok(Type {
            name_off: word(0),
            kind,
            vlen,
            kind_flag: info >> 31 == 1,
            size_or_type: word(2),
            tail,
        })
    }

    fn name(&self, off: u32) -> Cow<'_, str> {
        let strings = &self.data[self.strings.clone()];
        let rest = strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end])
    }

    /// The id of the first type of `kind` named `name`.
    fn find(&self, name: &str, kind: u32) -> Option<u32> {
        (1..=self.types.len() as u32).find(|id| {
            self.ty(*id)
                .is_ok_and(|t| t.kind == kind && self.name(t.name_off) == name)
        })
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = t.size_or_type,
                _ => return Ok(id),
            }
        }
        Err(BtfError::Format(format!("type {id}: qualifier chain too long")))
    }

    /// Size in bytes of type `id`.
    fn size(&self, id: u32) -> Result<u32, BtfError> {
        let id = self.resolve(id)?;
        let t = self.ty(id)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => Ok(t.size_or_type),
            KIND_PTR => Ok(8),
            KIND_ARRAY => {
                let elem = u32_at(t.tail, 0).unwrap_or(0);
                let n = u32_at(t.tail, 8).unwrap_or(0);
                self.size(elem)?
                    .checked_mul(n)
                    .ok_or_else(|| BtfError::Format(format!("array {id} too large")))
            }
            k => Err(BtfError::Layout(format!("type {id} of kind {k} has no size"))),
        }
    }

    /// Size of the struct or union `name`.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        let id = self.struct_id(name)?;
        self.size(id)
    }

    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.find(name, KIND_STRUCT)
            .or_else(|| self.find(name, KIND_UNION))
            .ok_or_else(|| BtfError::Layout(format!("no struct {name}")))
    }

    /// The member `name` of the struct or union `id`, looking into anonymous members: (offset, type id).
    fn member_in(&self, id: u32, name: &str) -> Result<Option<(u32, u32)>, BtfError> {
        let t = self.ty(self.resolve(id)?)?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return Ok(None);
        }
        for i in 0..t.vlen {
            let m = &t.tail[12 * i..12 * i + 12];
            let (m_name, m_type, raw) = (
                u32_at(m, 0).unwrap_or(0),
                u32_at(m, 4).unwrap_or(0),
                u32_at(m, 8).unwrap_or(0),
            );
            let (bits, bitfield) = if t.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            let member_name = self.name(m_name);
            let found = if member_name == name {
                Some((0, m_type))
            } else if member_name.is_empty() {
                self.member_in(m_type, name)?
            } else {
                None
            };
            if let Some((inner, ty)) = found {
                if bitfield != 0 || bits % 8 != 0 {
                    return Err(BtfError::Layout(format!("{name} is a bitfield")));
                }
                return Ok(Some((bits / 8 + inner, ty)));
            }
        }
        Ok(None)
    }

    /// The member at `path` ("a.b.c", each step inside the previous member's struct) of struct `outer`.
    pub fn member(&self, outer: &str, path: &str) -> Result<Member, BtfError> {
        let mut id = self.struct_id(outer)?;
        let mut offset = 0u32;
        for step in path.split('.') {
            let (off, ty) = self
                .member_in(id, step)?
                .ok_or_else(|| BtfError::Layout(format!("struct {outer} has no member {path}")))?;
            offset += off;
            id = ty;
        }
        Ok(Member {
            offset,
            size: self.size(id)?,
        })
    }

    /// Number of arguments of tracepoint `name` (its `btf_trace_<name>` prototype less the context pointer),
    /// or `None` when this kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let typedef = self.find(&format!("btf_trace_{name}"), KIND_TYPEDEF)?;
        let ptr = self.ty(typedef).ok()?.size_or_type;
        let ptr = self.ty(ptr).ok().filter(|t| t.kind == KIND_PTR)?;
        let proto = self.ty(ptr.size_or_type).ok().filter(|t| t.kind == KIND_FUNC_PROTO)?;
        proto.vlen.checked_sub(1)
    }

    /// The values of enum `name` with their names, without `prefix`.
    pub fn enum_names(&self, name: &str, prefix: &str) -> Result<HashMap<u32, String>, BtfError> {
        let id = self
            .find(name, KIND_ENUM)
            .or_else(|| self.find(name, KIND_ENUM64))
            .ok_or_else(|| BtfError::Layout(format!("no enum {name}")))?;
        let t = self.ty(id)?;
        let width = if t.kind == KIND_ENUM { 8 } else { 12 };
        Ok((0..t.vlen)
            .map(|i| {
                let e = &t.tail[width * i..width * (i + 1)];
                let label = self.name(u32_at(e, 0).unwrap_or(0));
                let label = label.strip_prefix(prefix).unwrap_or(&label).to_string();
                (u32_at(e, 4).unwrap_or(0), label)
            })
            .collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds raw BTF from (name, info, size_or_type, tail words) entries.
    pub(crate) struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
        next: u32,
    }

    impl Builder {
        pub(crate) fn new() -> Builder {
            Builder {
                strings: vec![0],
                types: Vec::new(),
                next: 1,
            }
        }

        pub(crate) fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }

        /// Adds a type and returns its id.
        pub(crate) fn add(&mut self, name: &str, kind: u32, flag: bool, vlen: u32, size: u32, tail: &[u32]) -> u32 {
            let name = self.string(name);
            let info = (kind << 24) | vlen | if flag { 1 << 31 } else { 0 };
            for w in [name, info, size].iter().chain(tail) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next += 1;
            self.next - 1
        }

        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            self.add(name, KIND_INT, false, 0, size, &[size * 8])
        }

        /// A struct (or union) of (name, type, bit offset) members.
        pub(crate) fn record(
            &mut self,
            kind: u32,
            name: &str,
            flag: bool,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut tail = Vec::new();
            for (n, t, off) in members {
                tail.extend([self.string(n), *t, *off]);
            }
            self.add(name, kind, flag, members.len() as u32, size, &tail)
        }

        pub(crate) fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend(self.types);
            out.extend(self.strings);
            out
        }
    }

    fn sample() -> Btf {
        let mut b = Builder::new();
        let u16_t = b.int("u16", 2);
        let u32_t = b.int("u32", 4);
        let addr = b.record(KIND_STRUCT, "addr", false, 16, &[("bytes", u32_t, 0)]);
        let typedef = b.add("addr_t", KIND_TYPEDEF, false, 0, addr, &[]);
        let anon_struct = b.record(KIND_STRUCT, "", false, 8, &[("a", u32_t, 0), ("b", u32_t, 32)]);
        let anon_union = b.record(KIND_UNION, "", false, 8, &[("whole", u32_t, 0), ("", anon_struct, 0)]);
        let ptr = b.add("", KIND_PTR, false, 0, u32_t, &[]);
        let arr = b.add("", KIND_ARRAY, false, 0, 0, &[u16_t, u32_t, 3]);
        b.record(
            KIND_STRUCT,
            "outer",
            true,
            48,
            &[
                ("", anon_union, 0),
                ("port", u16_t, 64),
                ("flags", u16_t, (4 << 24) | 80),
                ("peer", typedef, 128),
                ("p", ptr, 256),
                ("arr", arr, 320),
            ],
        );
        let proto = b.add("", KIND_FUNC_PROTO, false, 3, 0, &[0, ptr, 0, u32_t, 0, u16_t]);
        let fptr = b.add("", KIND_PTR, false, 0, proto, &[]);
        b.add("btf_trace_demo", KIND_TYPEDEF, false, 0, fptr, &[]);
        let (one, two) = (b.string("DEMO_ONE"), b.string("DEMO_TWO"));
        b.add("demo_reason", KIND_ENUM, false, 2, 4, &[one, 1, two, 2]);
        Btf::parse(b.finish()).expect("sample BTF parses")
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let btf = sample();
        assert_eq!(btf.member("outer", "whole").unwrap(), Member { offset: 0, size: 4 });
        assert_eq!(btf.member("outer", "b").unwrap(), Member { offset: 4, size: 4 });
        assert_eq!(btf.member("outer", "port").unwrap(), Member { offset: 8, size: 2 });
        assert_eq!(btf.member("outer", "peer").unwrap(), Member { offset: 16, size: 16 });
        assert_eq!(
            btf.member("outer", "peer.bytes").unwrap(),
            Member { offset: 16, size: 4 }
        );
        assert_eq!(btf.member("outer", "p").unwrap(), Member { offset: 32, size: 8 });
        assert_eq!(btf.member("outer", "arr").unwrap(), Member { offset: 40, size: 6 });
        assert_eq!(btf.struct_size("outer").unwrap(), 48);
    }

    #[test]
    fn refuses_bitfields_and_missing_members() {
        let btf = sample();
        assert!(matches!(btf.member("outer", "flags"), Err(BtfError::Layout(m)) if m.contains("bitfield")));
        assert!(matches!(btf.member("outer", "nope"), Err(BtfError::Layout(_))));
        assert!(matches!(btf.member("nostruct", "a"), Err(BtfError::Layout(_))));
    }

    #[test]
    fn reads_tracepoint_arity_and_enum_names() {
        let btf = sample();
        assert_eq!(btf.tracepoint_args("demo"), Some(2));
        assert_eq!(btf.tracepoint_args("absent"), None);
        let names = btf.enum_names("demo_reason", "DEMO_").unwrap();
        assert_eq!(names.get(&2).map(String::as_str), Some("TWO"));
    }

    #[test]
    fn rejects_malformed_data() {
        assert!(matches!(Btf::parse(vec![0; 10]), Err(BtfError::Format(_))));
        let mut data = sample().data;
        data[0] = 0;
        assert!(matches!(Btf::parse(data.clone()), Err(BtfError::Format(_))));
        data[0] = 0x9f;
        let cut = data.len() - 20;
        data.truncate(cut);
        assert!(matches!(Btf::parse(data), Err(BtfError::Format(_))));
    }
}
