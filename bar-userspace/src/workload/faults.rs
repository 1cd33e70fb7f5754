//! Page-fault workloads: fresh anonymous pages (minor faults, one per page) and pages of a
//! file read back after the page cache dropped them (major faults).

use std::{hint::black_box, os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{WorkloadArgs, counted, paced};

pub(super) const PAGE: usize = 4096;

/// Anonymous memory of a known size, with transparent huge pages off so that pages migrate
/// and fault one by one (a kernel with THP "always" would fault 2 MiB at once).
pub(super) struct Region {
    pub(super) ptr: *mut u8,
    pub(super) pages: usize,
}

impl Region {
    pub(super) fn new(pages: usize) -> anyhow::Result<Self> {
        // SAFETY: anonymous private mapping, unmapped on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap of {pages} pages: {}", std::io::Error::last_os_error());
        }
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(p, pages * PAGE, libc::MADV_NOHUGEPAGE) };
        Ok(Self {
            ptr: p.cast(),
            pages,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new().
        unsafe { libc::munmap(self.ptr.cast(), self.pages * PAGE) };
    }
}

/// Maps `pages` fresh anonymous pages, writes one byte in each (one page fault per page) and
/// unmaps them. Returns the pages touched.
#[inline(never)]
pub fn touch_fresh_pages(pages: usize) -> usize {
    let Ok(r) = Region::new(pages) else {
        return 0;
    };
    for i in 0..pages {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile(r.ptr.add(i * PAGE), 1) };
    }
    pages
}

/// Faults this thread has taken so far: (major, minor), as the kernel counts them.
fn thread_faults() -> (u64, u64) {
    // SAFETY: rusage is plain data, getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    (ru.ru_majflt as u64, ru.ru_minflt as u64)
}

/// Writes `pages` pages to a new file in `dir`, drops them from the page cache, and reads one
/// byte of each through a mapping with readahead off: one major fault per page. Returns the
/// major faults the kernel counted for this thread while reading.
#[inline(never)]
pub fn read_cold_file_pages(dir: &Path, pages: usize) -> anyhow::Result<u64> {
    let path = dir.join(format!("bar-cold-pages-{}", std::process::id()));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let result = (|| {
        std::io::Write::write_all(&mut &file, &vec![0x5a; pages * PAGE])?;
        file.sync_all()?;
        let fd = file.as_raw_fd();
        // SAFETY: advice on our own file descriptor.
        let rc = unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // SAFETY: a shared read-only mapping of the file just written, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PAGE,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Random access: no readahead, so each page is read in by its own fault.
        // SAFETY: advice on the mapping made above.
        unsafe { libc::madvise(p, pages * PAGE, libc::MADV_RANDOM) };
        let (before, _) = thread_faults();
        let base = p.cast::<u8>();
        let mut sum = 0u64;
        for i in 0..pages {
            // SAFETY: inside the mapping.
            sum += u64::from(unsafe { std::ptr::read_volatile(base.add(i * PAGE)) });
        }
        let (after, _) = thread_faults();
        black_box(sum);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, pages * PAGE) };
        Ok(after - before)
    })();
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("reading back {}", path.display()))
}

/// `--count` fresh pages (or `--rate` x `--seconds`), shared by `--threads` at `--rate`.
pub(super) fn faults(args: &WorkloadArgs) -> Value {
    let (total, threads) = (counted(args), args.threads);
    let rate = args.rate.map(|r| r / threads as f64);
    let pages: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            // Thread t takes its share of the pages, the first ones the remainder.
            .map(|t| total / threads + u64::from(t < total % threads))
            .map(|share| {
                s.spawn(move || {
                    let mut pages = 0;
                    paced(share, rate, |n| {
                        let mut left = n as usize;
                        while left > 0 {
                            let chunk = left.min(1024);
                            pages += touch_fresh_pages(chunk);
                            left -= chunk;
                        }
                    });
                    pages
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    json!({"workload": "faults", "pages": pages, "threads": threads})
}

/// `--count` cold pages of a file in `--dir`, then as many fresh ones.
pub(super) fn major(args: &WorkloadArgs) -> anyhow::Result<Value> {
    let dir = args
        .dir
        .as_deref()
        .context("the majorfaults workload needs --dir")?;
    let pages = args.count as usize;
    let major = read_cold_file_pages(dir, pages)?;
    let (_, minor_before) = thread_faults();
    let touched = touch_fresh_pages(pages);
    let (_, minor_after) = thread_faults();
    Ok(
        json!({"workload": "majorfaults", "cold_pages": pages, "major_faults": major,
                   "fresh_pages": touched, "minor_faults": minor_after - minor_before}),
    )
}
