//! Interning: frames and stacks get ids once, and the new ones are handed over to be written
//! before the events that use them.

use std::collections::HashMap;

use crate::capture::proto;

/// Interns frames and stacks and remembers which are new since the last `take_new`.
#[derive(Default)]
pub struct Interner {
    /// By (kernel, inlined, name, module): a function inlined somewhere is a frame apart from
    /// the same function called.
    frame_ids: HashMap<(bool, bool, String, String), u32>,
    stack_ids: HashMap<Vec<u32>, u32>,
    new_frames: Vec<proto::Frame>,
    new_stacks: Vec<proto::Stack>,
}

impl Interner {
    pub fn frame(&mut self, kernel: bool, name: String, module: String) -> u32 {
        self.frame_of(proto::Frame {
            name,
            module,
            kernel,
            inlined: false,
        })
    }

    /// A function inlined into the frame before it, at that frame's address.
    pub fn inlined_frame(&mut self, name: String, module: String) -> u32 {
        self.frame_of(proto::Frame {
            name,
            module,
            kernel: false,
            inlined: true,
        })
    }

    pub fn frame_of(&mut self, frame: proto::Frame) -> u32 {
        let proto::Frame {
            name,
            module,
            kernel,
            inlined,
        } = frame;
        let (name, module) = (
            crate::capture::bounded_name(name),
            crate::capture::bounded_name(module),
        );
        let next = self.frame_ids.len() as u32;
        *self
            .frame_ids
            .entry((kernel, inlined, name.clone(), module.clone()))
            .or_insert_with(|| {
                self.new_frames.push(proto::Frame {
                    name,
                    module,
                    kernel,
                    inlined,
                });
                next
            })
    }

    /// Stack id as stored in events: position + 1 (0 is "no stack").
    pub fn stack(&mut self, frames: Vec<u32>) -> u32 {
        if frames.is_empty() {
            return 0;
        }
        let next = self.stack_ids.len() as u32 + 1;
        *self.stack_ids.entry(frames.clone()).or_insert_with(|| {
            self.new_stacks.push(proto::Stack { frames });
            next
        })
    }

    /// Frames and stacks interned since the last call, to be written before the events that
    /// use them.
    pub fn take_new(&mut self) -> (Vec<proto::Frame>, Vec<proto::Stack>) {
        (
            std::mem::take(&mut self.new_frames),
            std::mem::take(&mut self.new_stacks),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_dedups_and_reports_new_once() {
        let mut i = Interner::default();
        let a = i.frame(false, "main".into(), "/bin/x".into());
        let b = i.frame(true, "schedule".into(), "[kernel.kallsyms]".into());
        assert_eq!(i.frame(false, "main".into(), "/bin/x".into()), a);
        // The same function, inlined somewhere, is a frame of its own.
        let inlined = i.inlined_frame("main".into(), "/bin/x".into());
        assert_ne!(inlined, a);
        assert_eq!(i.inlined_frame("main".into(), "/bin/x".into()), inlined);
        assert_ne!(a, b);
        let s1 = i.stack(vec![a, b]);
        assert_eq!(i.stack(vec![a, b]), s1);
        assert_eq!(s1, 1);
        assert_eq!(i.stack(vec![]), 0);
        let (frames, stacks) = i.take_new();
        assert_eq!(frames.len(), 3);
        assert!(frames[2].inlined && !frames[0].inlined);
        assert_eq!(stacks.len(), 1);
        assert_eq!(i.take_new().0.len(), 0);
    }
}
