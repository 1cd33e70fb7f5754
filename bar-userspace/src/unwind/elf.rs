//! The ELF side of a table: which sections hold call frame information, where the object's
//! executable segments lie, its build id. Files are read, never memory-mapped: another user
//! may truncate a file bar reads, which would kill bar through a mapping.

use std::{fs::File, io::Read as _, os::unix::fs::MetadataExt as _};

use object::{
    CompressionFormat, Object as _, ObjectSection as _, ObjectSegment as _, ReadRef, SegmentFlags,
    elf::PF_X, read::ReadCache,
};

use super::{Row, TableError, cfi, gopclntab};

/// Objects larger than this are not read (the largest shared objects seen are a few hundred
/// MB, with debug information).
pub const MAX_FILE_SIZE: u64 = 4 << 30;
/// Call frame sections larger than this are refused rather than read into memory.
pub const MAX_SECTION_SIZE: u64 = 256 << 20;

/// A loadable segment of the object, as its program headers place it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub executable: bool,
}

/// What a table needs to know of its object besides the rows.
#[derive(Clone, Debug, Default)]
pub struct ObjectInfo {
    pub build_id: Option<Vec<u8>>,
    pub segments: Vec<Segment>,
    /// The object carries Go's line table (`.gopclntab`): a Go program, unwound from it.
    pub go: bool,
    /// Entries of its call frame information that could not be parsed and were left out
    /// (their functions are walked by frame pointer), and why the first was.
    pub skipped: usize,
    pub skipped_why: Option<String>,
}

impl ObjectInfo {
    /// The address (as the program headers place it) that a mapping of the file at
    /// `file_offset` starts at, if an executable segment covers that offset.
    pub fn vaddr_of_offset(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .filter(|s| s.executable)
            .find(|s| {
                let start = s.offset & !0xfff;
                start <= file_offset && file_offset < s.offset + s.filesz.max(1)
            })
            .map(|s| file_offset.wrapping_add(s.vaddr.wrapping_sub(s.offset)))
    }
}

/// Reads an object's segments and build id, and the rows of its call frame information.
/// `file` must be a regular file; it is read through a cache of the ranges asked for.
pub fn read(file: File) -> Result<(ObjectInfo, Vec<Row>), TableError> {
    let meta = file.metadata().map_err(TableError::Io)?;
    if !meta.file_type().is_file() {
        return Err(TableError::NotElf("not a regular file".into()));
    }
    if meta.size() > MAX_FILE_SIZE {
        return Err(TableError::TooBig(format!(
            "{} bytes, more than the {MAX_FILE_SIZE} read",
            meta.size()
        )));
    }
    parse(&ReadCache::new(file))
}

/// [`read`] of an object in memory (the vDSO).
pub fn parse_bytes(data: &[u8]) -> Result<(ObjectInfo, Vec<Row>), TableError> {
    parse(data)
}

fn parse<'a, R: ReadRef<'a>>(data: R) -> Result<(ObjectInfo, Vec<Row>), TableError> {
    let obj = object::File::parse(data).map_err(|e| TableError::NotElf(e.to_string()))?;
    if obj.architecture() != object::Architecture::X86_64 {
        return Err(TableError::NotElf(format!(
            "a {:?} object, only x86-64 is unwound",
            obj.architecture()
        )));
    }
    let mut info = ObjectInfo {
        build_id: obj.build_id().ok().flatten().map(<[u8]>::to_vec),
        ..ObjectInfo::default()
    };
    for seg in obj.segments() {
        let Some((offset, filesz)) = seg.file_range().into() else {
            continue;
        };
        let executable =
            matches!(seg.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0);
        info.segments.push(Segment {
            vaddr: seg.address(),
            offset,
            filesz,
            executable,
        });
    }
    let eh_frame = match obj.section_by_name(".eh_frame") {
        Some(s) if s.size() > MAX_SECTION_SIZE => {
            return Err(TableError::TooBig(format!(
                ".eh_frame of {} bytes",
                s.size()
            )));
        }
        Some(s) => Some((
            s.data().map_err(|e| TableError::Malformed(e.to_string()))?,
            s.address(),
        )),
        None => None,
    };
    let debug_frame = match obj.section_by_name(".debug_frame") {
        Some(s) => Some(section_data(&s)?),
        None => None,
    };
    let text = obj.section_by_name(".text").map_or(0, |s| s.address());
    // Go code from Go's own table, which is right even through assembly that uses RBP for
    // data; the call frame information (C code linked in through cgo, or a Go binary's
    // .debug_frame) for what it leaves out.
    let go = if gopclntab::is_go(&obj) {
        match gopclntab::rows_of(&obj) {
            Ok(rows) => Some(rows),
            Err(e) if eh_frame.is_none() && debug_frame.is_none() => {
                return Err(TableError::Malformed(e.to_string()));
            }
            // The other tables still describe its frames, if less well.
            Err(_) => None,
        }
    } else {
        None
    };
    let cfi = if eh_frame.is_none() && debug_frame.is_none() {
        None
    } else {
        let parsed = cfi::rows(&cfi::Sections {
            eh_frame,
            text,
            debug_frame: debug_frame.as_deref(),
        })?;
        info.skipped = parsed.skipped;
        info.skipped_why = parsed.first_error;
        Some(parsed.rows)
    };
    info.go = go.is_some();
    let rows = match (go, cfi) {
        (Some(go), Some(cfi)) => super::overlay(&go, &cfi),
        (Some(rows), None) | (None, Some(rows)) => rows,
        (None, None) => return Err(TableError::NoUnwindInfo),
    };
    Ok((info, rows))
}

/// A section's contents, decompressed if the file compresses it (debug sections often are).
fn section_data<'a, R: ReadRef<'a>>(s: &object::Section<'a, '_, R>) -> Result<Vec<u8>, TableError> {
    let bad = |e: object::Error| TableError::Malformed(e.to_string());
    let c = s.compressed_data().map_err(bad)?;
    if c.uncompressed_size > MAX_SECTION_SIZE {
        return Err(TableError::TooBig(format!(
            "{} of {} bytes",
            s.name().unwrap_or("a section"),
            c.uncompressed_size
        )));
    }
    match c.format {
        CompressionFormat::None => Ok(c.data.to_vec()),
        CompressionFormat::Zlib => {
            let mut out = Vec::with_capacity(c.uncompressed_size as usize);
            flate2::read::ZlibDecoder::new(c.data)
                .take(MAX_SECTION_SIZE)
                .read_to_end(&mut out)
                .map_err(|e| TableError::Malformed(format!("decompressing: {e}")))?;
            Ok(out)
        }
        other => Err(TableError::Malformed(format!(
            "compressed as {other:?}, which is not read"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vaddr_of_a_mapping_follows_the_executable_segment() {
        let info = ObjectInfo {
            segments: vec![
                Segment {
                    vaddr: 0,
                    offset: 0,
                    filesz: 0x1000,
                    executable: false,
                },
                Segment {
                    vaddr: 0x2234,
                    offset: 0x1234,
                    filesz: 0x5000,
                    executable: true,
                },
            ],
            ..ObjectInfo::default()
        };
        // The mapping starts at the page holding the segment's first byte.
        assert_eq!(info.vaddr_of_offset(0x1000), Some(0x2000));
        assert_eq!(info.vaddr_of_offset(0x3000), Some(0x4000));
        assert_eq!(info.vaddr_of_offset(0x0), None);
        assert_eq!(info.vaddr_of_offset(0x7000), None);
    }

    #[test]
    fn reads_own_binary() {
        let exe = File::open(std::env::current_exe().unwrap()).unwrap();
        let (info, rows) = read(exe).unwrap();
        assert!(info.segments.iter().any(|s| s.executable));
        assert!(!info.go);
        // Rust emits asynchronous unwind tables: thousands of functions, entry rules rsp+8.
        assert!(rows.len() > 1000, "{} rows", rows.len());
        assert!(rows.iter().any(|r| r.cfa == super::super::Cfa::Rsp(8)));
        assert!(rows.windows(2).all(|w| w[0].pc <= w[1].pc));
    }

    #[test]
    fn refuses_what_is_not_an_object() {
        let dir = std::env::temp_dir().join(format!("bar-elf-test-{}", std::process::id()));
        std::fs::write(&dir, b"#!/bin/sh\necho not elf\n").unwrap();
        let err = read(File::open(&dir).unwrap()).unwrap_err();
        let _ = std::fs::remove_file(&dir);
        assert!(matches!(err, TableError::NotElf(_)), "{err}");
    }
}
