//! The eBPF datapath as the agent sees it: the objects `build.rs` compiled from `ebpf/*.bpf.c`,
//! embedded in the binary, and one module per program family that loads, attaches and reads it.

pub mod counter;
pub mod proxy;

/// The compiled objects, one `pub static NAME: &[u8]` per `ebpf/<name>.bpf.c`.
pub mod objects {
    include!(concat!(env!("OUT_DIR"), "/ebpf_objects.rs"));
}

/// Checks Rust twins against the C layout recorded in an object's BTF: the struct the kernel
/// and the verifier see, not a hand-copied description of it.
#[cfg(test)]
pub(crate) mod btf_layout {
    use btf_rs::{Btf, Type};
    use object::{Object, ObjectSection};

    fn btf_of(object_bytes: &[u8]) -> Btf {
        let file = object::File::parse(object_bytes).expect("embedded object is valid ELF");
        let section = file
            .section_by_name(".BTF")
            .expect("object has a .BTF section (built with -g)");
        Btf::from_bytes(section.data().expect(".BTF section is readable")).expect("BTF parses")
    }

    /// The type called `name` that `pick` accepts (a struct, an enum, ...).
    fn find_type<T>(btf: &Btf, kind: &str, name: &str, pick: impl Fn(Type) -> Option<T>) -> T {
        btf.resolve_types_by_name(name)
            .unwrap_or_default()
            .into_iter()
            .find_map(pick)
            .unwrap_or_else(|| panic!("{kind} {name} not in the object's BTF"))
    }

    /// Asserts that C `struct name` in `object_bytes` has `size` bytes and the named members at
    /// the given byte offsets, in that order, and no other members.
    pub(crate) fn assert_struct(
        object_bytes: &[u8],
        name: &str,
        size: usize,
        fields: &[(&str, usize)],
    ) {
        let btf = btf_of(object_bytes);
        let strukt = find_type(&btf, "struct", name, |t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        });
        assert_eq!(
            strukt.size(),
            size,
            "size of struct {name} (C) vs its Rust twin"
        );
        let c_fields: Vec<(String, usize)> = strukt
            .members
            .iter()
            .map(|m| {
                let member_name = btf.resolve_name(m).expect("member name resolves");
                (member_name, (m.bit_offset() / 8) as usize)
            })
            .collect();
        let rust_fields: Vec<(String, usize)> =
            fields.iter().map(|(n, o)| (n.to_string(), *o)).collect();
        assert_eq!(
            c_fields, rust_fields,
            "members of struct {name}: (name, offset) in C vs Rust"
        );
    }

    /// Asserts that C `enum name` has exactly these (name, value) pairs.
    pub(crate) fn assert_enum(object_bytes: &[u8], name: &str, variants: &[(&str, u32)]) {
        let btf = btf_of(object_bytes);
        let enumeration = find_type(&btf, "enum", name, |t| match t {
            Type::Enum(e) => Some(e),
            _ => None,
        });
        let c_variants: Vec<(String, u32)> = enumeration
            .members
            .iter()
            .map(|m| (btf.resolve_name(m).expect("variant name resolves"), m.val()))
            .collect();
        let rust_variants: Vec<(String, u32)> =
            variants.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        assert_eq!(c_variants, rust_variants, "variants of enum {name}");
    }
}
