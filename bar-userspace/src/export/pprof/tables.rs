//! The interned tables of a pprof profile: strings, functions, mappings and locations, each
//! kept once and referred to by id, as `profile.proto` asks.

use std::collections::HashMap;

use super::pb;
use crate::analyze::Profile;

/// The interned tables of a profile. Ids are positions plus one (0 means "none" in pprof).
#[derive(Default)]
pub(super) struct Tables {
    pub(super) strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    pub(super) functions: Vec<pb::Function>,
    function_ids: HashMap<String, u64>,
    pub(super) locations: Vec<pb::Location>,
    /// Locations of capture frames, by the ids of a frame and of the functions inlined into
    /// it there (the inlined frames that follow it in a stack).
    frame_locations: HashMap<Vec<u32>, u64>,
    /// Locations of annotations, by name.
    annotation_locations: HashMap<String, u64>,
    pub(super) mappings: Vec<pb::Mapping>,
    pub(super) mapping_ids: HashMap<String, u64>,
}

impl Tables {
    pub(super) fn string(&mut self, s: &str) -> i64 {
        if self.strings.is_empty() {
            // The spec reserves index 0 for the empty string.
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), i);
        i
    }

    pub(super) fn value_type(&mut self, ty: &str, unit: &str) -> pb::ValueType {
        pb::ValueType {
            r#type: self.string(ty),
            unit: self.string(unit),
        }
    }

    fn function(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.function_ids.get(name) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        // `system_name` (the mangled name) stays unset: bar keeps only the demangled one, and
        // pprof takes a system name equal to the name as not yet demangled and strips `<...>`
        // from it, turning `<std::time::Instant>::now` into `::now`.
        let name_idx = self.string(name);
        self.functions.push(pb::Function {
            id,
            name: name_idx,
            ..Default::default()
        });
        self.function_ids.insert(name.to_owned(), id);
        id
    }

    fn mapping(&mut self, file: &str) -> u64 {
        if file.is_empty() {
            return 0;
        }
        if let Some(&id) = self.mapping_ids.get(file) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(file);
        self.mappings.push(pb::Mapping {
            id,
            filename,
            // bar names frames while the process lives; pprof must not look for binaries that
            // may be gone (or belong to another machine) to name them again.
            has_functions: true,
            ..Default::default()
        });
        self.mapping_ids.insert(file.to_owned(), id);
        id
    }

    /// A location with a line per function, innermost first: the last is the function the
    /// code belongs to, the others were inlined into it (pprof's own way to say so).
    fn location(&mut self, names: &[&str], mapping_id: u64) -> u64 {
        let line = names
            .iter()
            .map(|name| pb::Line {
                function_id: self.function(name),
                ..Default::default()
            })
            .collect();
        let id = self.locations.len() as u64 + 1;
        self.locations.push(pb::Location {
            id,
            mapping_id,
            line,
            ..Default::default()
        });
        id
    }

    pub(super) fn annotation(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.annotation_locations.get(name) {
            return id;
        }
        let id = self.location(&[name], 0);
        self.annotation_locations.insert(name.to_owned(), id);
        id
    }

    /// Location ids of a capture stack, root first. The capture interns frames per
    /// (name, module), so one location per frame id is one per function and object; the
    /// functions inlined into a frame (the inlined frames after it) are lines of its location.
    pub(super) fn stack(&mut self, profile: &Profile, stack: u32) -> Vec<u64> {
        let names = profile.stack_names(stack);
        let frame_ids = stack
            .checked_sub(1)
            .and_then(|i| profile.stacks.get(i as usize))
            .map(|s| s.frames.as_slice())
            .unwrap_or_default();
        let known = |i: usize| {
            let f = *frame_ids.get(i)?;
            profile.frames.get(f as usize).map(|fr| (f, fr))
        };
        let mut out = Vec::with_capacity(names.len());
        let mut i = 0;
        while i < names.len() {
            // A placeholder `stack_names` put for a stack or frame the file lacks.
            let Some((f, fr)) = known(i) else {
                out.push(self.annotation(&names[i]));
                i += 1;
                continue;
            };
            let mut group = vec![f];
            let mut end = i + 1;
            while let Some((g, _)) = known(end).filter(|(_, g)| g.inlined) {
                group.push(g);
                end += 1;
            }
            let id = match self.frame_locations.get(&group) {
                Some(&id) => id,
                None => {
                    // Innermost first, without the mark that folded stacks need and pprof
                    // does not.
                    let lines: Vec<&str> = names[i..end]
                        .iter()
                        .enumerate()
                        .rev()
                        .map(|(k, n)| match n.strip_suffix("_[i]") {
                            Some(inlined) if k > 0 => inlined,
                            _ => n,
                        })
                        .collect();
                    let mapping = self.mapping(&fr.module);
                    let id = self.location(&lines, mapping);
                    self.frame_locations.insert(group, id);
                    id
                }
            };
            out.push(id);
            i = end;
        }
        out
    }
}
