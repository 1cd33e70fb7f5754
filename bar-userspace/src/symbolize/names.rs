//! Names of user code: the file offsets of each object to the functions there, through
//! blazesym, with the functions the compiler inlined at each offset where DWARF says so.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer as Blaze,
    source::{Elf, Source},
};

/// blazesym as bar uses it: function names, and with `inlined` the functions inlined at an
/// address (which blazesym finds with the line tables, hence code information, which bar
/// itself does not keep).
pub(super) fn new_blaze(inlined: bool) -> Blaze {
    Blaze::builder()
        .enable_code_info(inlined)
        .enable_inlined_fns(inlined)
        .build()
}

/// The name of the function at a file offset, and the functions inlined there, outermost
/// first (blazesym's order: `f` inlined `g`, which inlined `h`, is `g`, `h`).
#[derive(Debug, Default)]
pub(super) struct Named {
    pub name: String,
    pub inlined: Vec<String>,
}

/// How far names are looked for beyond the symbol tables.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lookup {
    /// Names the symbol table lacks are looked for in DWARF (and debug files).
    pub dwarf: bool,
    /// The functions inlined at every offset are looked for in DWARF too.
    pub inlined: bool,
}

/// Names the file offsets of each object. The ELF symbol table first: it names nearly every
/// function, and parsing DWARF costs far more (about 50 ms of CPU for bar-probe's own binary,
/// spent while the target runs). Then DWARF, and debug files found by debug link: for the
/// offsets the table does not name, and with inlined functions for every offset, since only
/// DWARF knows what was inlined where.
pub(super) fn name_offsets(
    blaze: &Blaze,
    per_object: HashMap<PathBuf, Vec<u64>>,
    lookup: Lookup,
) -> HashMap<(PathBuf, u64), Named> {
    let mut names = HashMap::new();
    for (path, mut offs) in per_object {
        offs.sort_unstable();
        offs.dedup();
        let unnamed = name_object(blaze, &path, &offs, false, &mut names);
        if !lookup.dwarf {
            continue;
        }
        let ask = if lookup.inlined { offs } else { unnamed };
        if !ask.is_empty() {
            name_object(blaze, &path, &ask, true, &mut names);
        }
    }
    names
}

/// Names `offs` of the object at `path` from its symbol table or (`debug_syms`) its DWARF. A
/// name found before stands (the symbol table's, which is what users and other tools know);
/// DWARF adds the functions inlined there. Returns the offsets left without a name.
fn name_object(
    blaze: &Blaze,
    path: &Path,
    offs: &[u64],
    debug_syms: bool,
    names: &mut HashMap<(PathBuf, u64), Named>,
) -> Vec<u64> {
    let mut elf = Elf::new(path);
    elf.debug_syms = debug_syms;
    let Ok(syms) = blaze.symbolize(&Source::Elf(elf), Input::FileOffset(offs)) else {
        return offs.to_vec();
    };
    let mut unnamed = Vec::new();
    for (off, s) in offs.iter().zip(syms) {
        let Symbolized::Sym(sym) = s else {
            unnamed.push(*off);
            continue;
        };
        let named = names
            .entry((path.to_owned(), *off))
            .or_insert_with(|| Named {
                name: sym.name.to_string(),
                inlined: Vec::new(),
            });
        if !sym.inlined.is_empty() {
            named.inlined = sym.inlined.iter().map(|f| f.name.to_string()).collect();
        }
    }
    unnamed
}
