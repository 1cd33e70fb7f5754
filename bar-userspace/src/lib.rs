//! bar: an eBPF profiler for on-CPU time, off-CPU time, page faults, TCP connects and NUMA
//! migrations.
//!
//! The data path, one module per stage:
//! [`probe`] (load and attach, with a fallback chain per family) →
//! [`collect`] (per-CPU perf buffers, tokio) →
//! [`symbolize`] (blazesym, while the target lives) →
//! [`capture`] (the `capture.bar` file) →
//! [`analyze`] (the one reader of a capture; folded stacks, histograms, phases) →
//! [`render`] (folded, SVG, JSON).
//! [`record`] runs the first four for a live session, [`report`] the last three for a file.
//! [`diff`] compares two profiles read from files (captures or folded), with the tests of
//! [`stats`]; [`baseline`] keeps a store of per-run summaries of a workload, which `diff` takes
//! as the base of a CI gate.
//! [`export`] writes one kind of a capture for other tools (pprof); [`push`] sends a live
//! recording's profile to Pyroscope or an OpenTelemetry Collector, interval by interval.

pub mod analyze;
pub mod baseline;
pub mod capture;
pub mod cli;
pub mod collect;
pub mod diff;
pub mod dumps;
pub mod evidence;
pub mod export;
pub mod info;
pub mod markers;
pub mod probe;
pub mod push;
pub mod record;
pub mod render;
pub mod report;
pub mod stats;
pub mod symbolize;
pub mod sys;
pub mod system;
pub mod target;
pub mod unwind;
pub mod workload;
