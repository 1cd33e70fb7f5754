//! The contract between bar's kernel programs and its collector.
//!
//! Everything that crosses the user/kernel boundary is defined here once: the records the
//! programs write into the per-CPU perf buffers, the configuration the loader writes into the
//! programs' read-only data before loading, and the names of maps and programs. Records are
//! `#[repr(C)]`, plain old data, with explicit padding so both sides agree byte for byte.
//!
//! By file: `records.rs` (what goes through the perf buffers), `state.rs` (what the programs
//! keep in maps, and map sizes), `layout.rs` (offsets found at load time), `config.rs`, and
//! `names.rs` (every program and map name; a test of the collector holds it to the object).
//! Everything is re-exported here, so both sides name it from the crate root.
#![no_std]

mod config;
mod layout;
mod names;
mod records;
mod state;
pub mod unwind;

// One flat namespace for both sides: the modules only sort the definitions.
pub use self::{
    config::Config,
    layout::Layout,
    names::{CONFIG_GLOBAL, maps, programs},
    records::*,
    state::*,
};

// The two sides must agree byte for byte and Pod must hold: no implicit padding anywhere.
const _: () = {
    assert!(size_of::<Header>() == 32);
    assert!(size_of::<FaultRecord>() == 56);
    assert!(size_of::<OffCpuRecord>() == 48);
    assert!(size_of::<OffCpuStart>() == 32);
    assert!(size_of::<SwitchIn>() == 16);
    assert!(size_of::<TcpRecord>() == 88);
    assert!(size_of::<TcpStart>() == 24);
    assert!(size_of::<NumaTaskRecord>() == 56);
    assert!(size_of::<NumaPagesRecord>() == 80);
    assert!(size_of::<NumaPending>() == 16);
    assert!(size_of::<FaultArgs>() == 24);
    assert!(size_of::<SumKey>() == 32);
    assert!(core::mem::offset_of!(Batch<FaultRecord>, records) == BATCH_HEADER);
    assert!(core::mem::offset_of!(Batch<OffCpuRecord>, records) == BATCH_HEADER);
    assert!(size_of::<SumValue>() == 16);
    // An even number of u32 fields, so Config (8-byte aligned) has no trailing padding.
    assert!(size_of::<Layout>() == 74 * 4);
    assert!(size_of::<Config>() == 48 + 74 * 4);
    assert!(size_of::<ProcessRecord>() == 56);
    assert!(size_of::<UserStack>() == 16 + USER_STACK_FRAMES * 8);
};

#[cfg(feature = "user")]
mod user {
    use super::{
        Config, FaultArgs, FaultRecord, Header, NumaPagesRecord, NumaPending, NumaTaskRecord,
        OffCpuRecord, OffCpuStart, ProcessRecord, SumKey, SumValue, SwitchIn, TcpRecord, TcpStart,
        UserStack,
    };

    // SAFETY: all of these are #[repr(C)] structs of integers with explicit padding fields, so
    // every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Header {}
    unsafe impl aya::Pod for FaultRecord {}
    unsafe impl aya::Pod for OffCpuRecord {}
    unsafe impl aya::Pod for OffCpuStart {}
    unsafe impl aya::Pod for SwitchIn {}
    unsafe impl aya::Pod for TcpRecord {}
    unsafe impl aya::Pod for TcpStart {}
    unsafe impl aya::Pod for NumaTaskRecord {}
    unsafe impl aya::Pod for NumaPagesRecord {}
    unsafe impl aya::Pod for UserStack {}
    unsafe impl aya::Pod for ProcessRecord {}
    unsafe impl aya::Pod for NumaPending {}
    unsafe impl aya::Pod for FaultArgs {}
    unsafe impl aya::Pod for SumKey {}
    unsafe impl<T: aya::Pod> aya::Pod for super::Batch<T> {}
    unsafe impl aya::Pod for SumValue {}
}
