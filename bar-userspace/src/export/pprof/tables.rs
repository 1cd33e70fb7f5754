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
    /// Locations of capture frames, by frame id.
    frame_locations: HashMap<u32, u64>,
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

    fn location(&mut self, name: &str, mapping_id: u64) -> u64 {
        let function_id = self.function(name);
        let id = self.locations.len() as u64 + 1;
        self.locations.push(pb::Location {
            id,
            mapping_id,
            line: vec![pb::Line {
                function_id,
                ..Default::default()
            }],
            ..Default::default()
        });
        id
    }

    pub(super) fn annotation(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.annotation_locations.get(name) {
            return id;
        }
        let id = self.location(name, 0);
        self.annotation_locations.insert(name.to_owned(), id);
        id
    }

    /// Location ids of a capture stack, root first. The capture interns frames per
    /// (name, module), so one location per frame id is one per function and object.
    pub(super) fn stack(&mut self, profile: &Profile, stack: u32) -> Vec<u64> {
        let names = profile.stack_names(stack);
        let frame_ids = stack
            .checked_sub(1)
            .and_then(|i| profile.stacks.get(i as usize))
            .map(|s| s.frames.as_slice())
            .unwrap_or_default();
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let frame = frame_ids.get(i).copied();
                let known = frame.and_then(|f| profile.frames.get(f as usize).map(|fr| (f, fr)));
                match known {
                    Some((f, fr)) => {
                        if let Some(&id) = self.frame_locations.get(&f) {
                            return id;
                        }
                        let mapping = self.mapping(&fr.module);
                        let id = self.location(name, mapping);
                        self.frame_locations.insert(f, id);
                        id
                    }
                    // A placeholder `stack_names` put for a stack or frame the file lacks.
                    None => self.annotation(name),
                }
            })
            .collect()
    }
}
