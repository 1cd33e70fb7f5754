//! bar's kernel programs. Each family of events has one program per attach point it can use;
//! the loader picks, per family, the first attach point this kernel accepts and loads only
//! those programs. Every program filters on the target before doing any work, writes one small
//! record to the per-CPU `EVENTS` perf buffer, and refers to stacks by id in `STACKS`.
#![no_std]
#![no_main]

mod cpu;
mod faults;
mod numa;
mod offcpu;
mod process;
mod shared;
mod tcp;
mod unwind;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Any reachable panic makes the verifier reject the program at load time.
    loop {}
}
