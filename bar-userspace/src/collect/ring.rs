//! One CPU's perf ring buffer, opened by bar itself rather than through aya's
//! `PerfEventArray::open`. aya 0.14 opens the ring with `wakeup_events = 1`: the kernel then
//! queues an irq_work (a self-IPI, a VM exit under virtualization) and wakes the reader's epoll
//! for every single record, which cost more than the record itself (a page-fault storm ran
//! 6.6x slower traced, 1.0x with the same hooks doing nothing). Here the ring wakes its reader
//! only when `wakeup_watermark` bytes are waiting; the reader also drains on a short timer, so
//! a quiet ring is still read promptly.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    ptr::{self, NonNull},
    sync::atomic::{self, Ordering},
};

// include/uapi/linux/perf_event.h
const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_BPF_OUTPUT: u64 = 10;
const PERF_SAMPLE_RAW: u64 = 1 << 10;
/// `perf_event_attr.watermark`: wake up by bytes (`wakeup_watermark`), not by record count.
const ATTR_FLAG_WATERMARK: u64 = 1 << 14;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_DISABLE: libc::c_ulong = 0x2401;
const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_SAMPLE: u32 = 9;
/// Offsets of `data_head` and `data_tail` in `struct perf_event_mmap_page` (fixed by the ABI:
/// the first 1024 bytes are the self-monitoring fields and their reserve).
const DATA_HEAD: usize = 1024;
const DATA_TAIL: usize = 1032;
// include/uapi/linux/bpf.h
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// `struct perf_event_attr` up to `config1` (`PERF_ATTR_SIZE_VER0`, which every kernel takes).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_watermark: u32,
    bp_type: u32,
    config1: u64,
}
const _: () = assert!(size_of::<PerfEventAttr>() == 64);

/// What a drain hands out: a record (in up to two pieces, when it straddles the end of the
/// ring) or a count of records the kernel had no room for.
pub enum RingEvent<'a> {
    Sample { head: &'a [u8], tail: &'a [u8] },
    Lost(u64),
}

/// A mapped perf ring of the `bpf-output` software event on one CPU.
pub struct PerfRing {
    fd: OwnedFd,
    /// Start of the mapping: one metadata page, then `size` bytes of data.
    base: NonNull<u8>,
    page: usize,
    size: usize,
}

// SAFETY: the mapping is owned by this value and only touched through `&mut self` (drain) or
// at drop; nothing in it is tied to the thread that created it.
unsafe impl Send for PerfRing {}

impl PerfRing {
    /// Opens and maps a ring of `pages` data pages (a power of two) on `cpu` that signals its
    /// reader once it is half full: early enough that a reader woken late still finds room,
    /// rare enough that a storm costs a few wakeups per second.
    pub fn open(cpu: u32, pages: usize) -> io::Result<Self> {
        if !pages.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{pages} pages is not a power of two"),
            ));
        }
        // SAFETY: no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let size = page * pages;
        let attr = PerfEventAttr {
            type_: PERF_TYPE_SOFTWARE,
            size: size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_BPF_OUTPUT,
            sample_period: 1,
            sample_type: PERF_SAMPLE_RAW,
            flags: ATTR_FLAG_WATERMARK,
            wakeup_watermark: u32::try_from(size / 2).unwrap_or(u32::MAX),
            ..PerfEventAttr::default()
        };
        // SAFETY: a valid attr for the duration of the call; pid -1 with a cpu is "every task
        // on this CPU", as a bpf-output event requires.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &raw const attr,
                -1 as libc::pid_t,
                cpu as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: mapping a perf event fd: one metadata page followed by the data pages.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                page + size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = Self {
            fd,
            base: NonNull::new(base.cast::<u8>()).expect("mmap returned a mapping"),
            page,
            size,
        };
        // SAFETY: a perf event fd; the ioctl takes no argument.
        if unsafe { libc::ioctl(ring.fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ring)
    }

    /// Puts this ring at index `cpu` of a `BPF_MAP_TYPE_PERF_EVENT_ARRAY`, where
    /// `bpf_perf_event_output(.., BPF_F_CURRENT_CPU, ..)` finds it.
    pub fn insert_into(&self, map: BorrowedFd<'_>, cpu: u32) -> io::Result<()> {
        let value: u32 = self.fd.as_raw_fd() as u32;
        // union bpf_attr, the BPF_MAP_*_ELEM variant.
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: (&raw const cpu) as u64,
            value: (&raw const value) as u64,
            flags: 0,
        };
        // SAFETY: key and value point to u32s that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_ELEM,
                &raw const attr,
                size_of::<ElemAttr>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn head_tail(&self) -> (*const u64, *mut u64) {
        // SAFETY: both offsets are inside the metadata page of the mapping.
        unsafe {
            (
                self.base.as_ptr().add(DATA_HEAD).cast::<u64>(),
                self.base.as_ptr().add(DATA_TAIL).cast::<u64>(),
            )
        }
    }

    /// Hands every record written since the last drain to `f`, then gives the space back to
    /// the kernel.
    pub fn drain(&mut self, mut f: impl FnMut(RingEvent<'_>)) {
        let (head_ptr, tail_ptr) = self.head_tail();
        // SAFETY: the kernel publishes data_head with a release store; it is read once here.
        let head = unsafe { ptr::read_volatile(head_ptr) };
        atomic::fence(Ordering::Acquire);
        // SAFETY: only this reader writes data_tail.
        let mut tail = unsafe { ptr::read_volatile(tail_ptr) };
        // SAFETY: the data area starts one page into the mapping and is `size` bytes long.
        let data = unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(self.page).cast_const(), self.size)
        };
        let size = self.size as u64;
        let read_u32 = |at: u64| {
            let i = (at % size) as usize;
            // Records are 8-byte aligned, so the fixed fields read here never wrap.
            u32::from_ne_bytes(data[i..i + 4].try_into().expect("4 bytes"))
        };
        let read_u64 = |at: u64| {
            let i = (at % size) as usize;
            u64::from_ne_bytes(data[i..i + 8].try_into().expect("8 bytes"))
        };
        while tail < head {
            // struct perf_event_header { u32 type; u16 misc; u16 size; }
            let type_ = read_u32(tail);
            let rec_size = u64::from((read_u64(tail) >> 48) as u16);
            if rec_size == 0 {
                break;
            }
            match type_ {
                PERF_RECORD_SAMPLE => {
                    // Header, then u32 size, then the raw bytes the program passed.
                    let len = read_u32(tail + 8) as usize;
                    let start = ((tail + 12) % size) as usize;
                    let end = start + len;
                    if end <= data.len() {
                        f(RingEvent::Sample {
                            head: &data[start..end],
                            tail: &[],
                        });
                    } else {
                        f(RingEvent::Sample {
                            head: &data[start..],
                            tail: &data[..end - data.len()],
                        });
                    }
                }
                // Header, u64 id, u64 lost.
                PERF_RECORD_LOST => f(RingEvent::Lost(read_u64(tail + 16))),
                _ => {}
            }
            tail += rec_size;
        }
        // Release the space only after every record in it has been read.
        atomic::fence(Ordering::SeqCst);
        // SAFETY: only this reader writes data_tail.
        unsafe { ptr::write_volatile(tail_ptr, tail) };
    }
}

impl AsFd for PerfRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for PerfRing {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for PerfRing {
    fn drop(&mut self) {
        // SAFETY: our own fd and mapping, unused after this.
        unsafe {
            libc::ioctl(self.fd.as_raw_fd(), PERF_EVENT_IOC_DISABLE, 0);
            libc::munmap(self.base.as_ptr().cast(), self.page + self.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills a fake ring the way the kernel does and checks what a drain hands out.
    #[test]
    fn drains_samples_wrapped_samples_and_losses() {
        let page = 4096;
        let size = 4096;
        let mut mem = vec![0u64; (page + size) / 8];
        let base = NonNull::new(mem.as_mut_ptr().cast::<u8>()).unwrap();
        let bytes = |m: &mut Vec<u64>| {
            // SAFETY: the vector's own memory, as bytes.
            unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<u8>(), page + size) }
        };
        let put = |m: &mut Vec<u64>, at: usize, b: &[u8]| {
            let buf = bytes(m);
            for (i, x) in b.iter().enumerate() {
                buf[page + (at + i) % size] = *x;
            }
        };
        let header = |t: u32, s: u16| {
            let mut h = t.to_ne_bytes().to_vec();
            h.extend(0u16.to_ne_bytes());
            h.extend(s.to_ne_bytes());
            h
        };
        // A sample that wraps: starts 24 bytes before the end.
        let start = size - 24;
        let payload: Vec<u8> = (1..=36).collect();
        let mut rec = header(PERF_RECORD_SAMPLE, 56);
        rec.extend(36u32.to_ne_bytes());
        rec.extend(&payload);
        rec.resize(56, 0);
        put(&mut mem, start, &rec);
        let mut lost = header(PERF_RECORD_LOST, 24);
        lost.extend(0u64.to_ne_bytes());
        lost.extend(5u64.to_ne_bytes());
        put(&mut mem, start + 56, &lost);
        let head = (start + 56 + 24) as u64;
        bytes(&mut mem)[DATA_HEAD..DATA_HEAD + 8].copy_from_slice(&head.to_ne_bytes());
        bytes(&mut mem)[DATA_TAIL..DATA_TAIL + 8].copy_from_slice(&(start as u64).to_ne_bytes());
        let mut ring = PerfRing {
            // SAFETY: drain never touches the descriptor, and the ring is forgotten below so
            // that it is neither closed nor unmapped.
            fd: unsafe { OwnedFd::from_raw_fd(0) },
            base,
            page,
            size,
        };
        let mut seen = Vec::new();
        let mut lost_total = 0;
        ring.drain(|e| match e {
            RingEvent::Sample { head, tail } => seen.push([head, tail].concat()),
            RingEvent::Lost(n) => lost_total += n,
        });
        let tail = ring.head_tail().1;
        // SAFETY: inside `mem`.
        assert_eq!(unsafe { *tail }, head);
        std::mem::forget(ring);
        assert_eq!(seen, vec![payload]);
        assert_eq!(lost_total, 5);
    }
}
