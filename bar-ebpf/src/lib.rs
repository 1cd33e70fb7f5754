// Present so that bar-userspace can name this crate as a build dependency: Cargo then reruns
// the build script (which builds the `bar` binary for the BPF target) when the programs or the
// shared types change.
#![no_std]
