//! The kernel programs' object, built for the BPF target by the build script and embedded in
//! bar-probe, and the test that holds it to the table of names both sides spell
//! (`bar_ebpf_common::{programs, maps}`).

/// The kernel object.
pub(super) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bar"));

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bar_ebpf_common::{CONFIG_GLOBAL, maps, programs};
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

    use super::OBJECT;

    /// What the object defines: programs (global functions in a section of their own, which
    /// aya's macros name after the attach type; shared code stays in `.text`), maps (in the
    /// `maps` section) and read-only globals.
    #[derive(Default)]
    struct Defined {
        programs: BTreeSet<String>,
        maps: BTreeSet<String>,
        globals: BTreeSet<String>,
    }

    fn defined() -> Defined {
        let file = object::File::parse(OBJECT).expect("the embedded kernel object is an ELF file");
        let mut found = Defined::default();
        for sym in file
            .symbols()
            .filter(|s| s.is_global() && s.is_definition())
        {
            let (Some(index), Ok(name)) = (sym.section_index(), sym.name()) else {
                continue;
            };
            let section = file
                .section_by_index(index)
                .and_then(|s| s.name().map(str::to_owned));
            let Ok(section) = section else { continue };
            let set = match (sym.kind(), section.as_str()) {
                (SymbolKind::Text, ".text") => continue,
                (SymbolKind::Text, _) => &mut found.programs,
                (SymbolKind::Data, "maps" | ".maps") => &mut found.maps,
                (SymbolKind::Data, ".rodata") => &mut found.globals,
                _ => continue,
            };
            set.insert(name.to_owned());
        }
        found
    }

    /// Both ways: a name of the table that the object lacks, and a name of the object that the
    /// table lacks, with what to do about each.
    fn compare(what: &str, names: &[&str], object: &BTreeSet<String>) {
        let table: BTreeSet<String> = names.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(
            table.len(),
            names.len(),
            "a name of {what} is in its table twice"
        );
        let missing: Vec<_> = table.difference(object).collect();
        let unnamed: Vec<_> = object.difference(&table).collect();
        assert!(
            missing.is_empty(),
            "bar_ebpf_common::{what} names {missing:?}, which the kernel object does not \
             define: spell them as the kernel side does"
        );
        assert!(
            unnamed.is_empty(),
            "the kernel object defines {unnamed:?}, which bar_ebpf_common::{what} does not \
             name: add them to the table in bar-ebpf-common/src/names.rs"
        );
    }

    #[test]
    fn the_table_of_names_is_the_objects() {
        let found = defined();
        // Not a vacuous comparison: the object has the programs of every family.
        assert!(found.programs.len() >= 25, "{:?}", found.programs);
        compare("programs", programs::ALL, &found.programs);
        compare("maps", maps::ALL, &found.maps);
        assert!(
            found.globals.contains(CONFIG_GLOBAL),
            "the kernel object has no global {CONFIG_GLOBAL}: {:?}",
            found.globals
        );
    }
}
