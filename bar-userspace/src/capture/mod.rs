//! Store: the capture file (`capture.bar`), written block by block while recording and read
//! back by `report`, `diff`, `export` and `info`.
//!
//! Layout: an 16-byte file header (`BARCAPT\0`, format version as u32 LE, 4 reserved bytes),
//! then blocks, each `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`, where the
//! payload is a protobuf `Block` (see `proto.rs` and `docs/capture.proto`). The first block is
//! `Meta`, the last of a complete file is `Trailer`. Frames and stacks are written before the
//! events that refer to them, and each block is flushed whole, so a file cut short by a crash or
//! SIGKILL still reads up to its last complete block.

pub mod proto;

use std::{
    fs::{File, OpenOptions},
    io::{self, BufReader, BufWriter, Cursor, Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use prost::Message;

pub use self::proto::block::Body;

pub const MAGIC: &[u8; 8] = b"BARCAPT\0";
/// Format version this build writes and the newest it reads. 2: events may stand for several
/// (`Event.count`, summed in the kernel), which a version 1 reader would count as one.
pub const VERSION: u32 = 2;
const FILE_HEADER_LEN: usize = 16;
const BLOCK_HEADER_LEN: usize = 8;
/// No block is larger than this; a larger length means a corrupt header.
const MAX_BLOCK: usize = 256 << 20;
/// The longest name (of a frame, a module, a process) a capture holds or a reader keeps.
/// Symbol tables and crafted files can hold longer ones; one name of 10 MB once cost `report`
/// 2 GB, copied into the folded line of every stack that held it.
pub const MAX_NAME: usize = 4096;
/// What ends a name cut to [`MAX_NAME`] bytes.
pub const CUT_MARK: &str = "…[cut]";

/// `name`, or its first bytes and [`CUT_MARK`] when it is longer than [`MAX_NAME`].
pub fn bounded_name(mut name: String) -> String {
    if name.len() > MAX_NAME {
        let mut at = MAX_NAME - CUT_MARK.len();
        while !name.is_char_boundary(at) {
            at -= 1;
        }
        name.truncate(at);
        name.push_str(CUT_MARK);
    }
    name
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    // The cause is the source: anyhow prints it after the message, once.
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is not a bar capture (bad magic)")]
    NotACapture(PathBuf),
    #[error("{0} is not a regular file: give the path of a capture.bar")]
    NotAFile(PathBuf),
    #[error(
        "{path} is capture format version {version}, newer than this bar-probe reads ({VERSION}); use a newer bar-probe"
    )]
    TooNew { path: PathBuf, version: u32 },
    #[error("{0} has no metadata block: the recording never got started")]
    NoMeta(PathBuf),
    #[error("{path} cannot be read: its metadata block is damaged ({reason})")]
    MetaDamaged { path: PathBuf, reason: String },
}

impl CaptureError {
    /// A capture without readable metadata: damaged at its first block, or never started.
    pub fn without_meta(path: &Path, damage: Option<&Damage>) -> Self {
        match damage {
            Some(d) if d.block == 0 => Self::MetaDamaged {
                path: path.to_owned(),
                reason: d.reason.clone(),
            },
            _ => Self::NoMeta(path.to_owned()),
        }
    }
}

/// Writes a capture incrementally.
pub struct Writer {
    file: BufWriter<File>,
    path: PathBuf,
    blocks: u64,
    crc: crc32fast::Hasher,
    size: u64,
}

impl Writer {
    /// Creates the file (mode 0600: a capture holds command lines and symbols of the host) and
    /// writes the header and the metadata block. Recordings create theirs in their output
    /// folder ([`Writer::new`] with [`crate::sys::files::Dir::create_file`]).
    pub fn create(path: &Path, meta: proto::Meta) -> io::Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Self::new(file, path.to_owned(), meta)
    }

    /// Writes the header and the metadata block into `file`, a new empty file at `path`.
    pub fn new(file: File, path: PathBuf, meta: proto::Meta) -> io::Result<Self> {
        let mut w = Self {
            file: BufWriter::with_capacity(1 << 20, file),
            path,
            blocks: 0,
            crc: crc32fast::Hasher::new(),
            size: 0,
        };
        let mut header = [0u8; FILE_HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        w.file.write_all(&header)?;
        w.size = FILE_HEADER_LEN as u64;
        w.write(Body::Meta(meta))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// Appends one block and pushes it to the kernel, so that it survives a crash of bar.
    pub fn write(&mut self, body: Body) -> io::Result<()> {
        let payload = proto::Block { body: Some(body) }.encode_to_vec();
        // One pass over the payload for the block's checksum and the file's.
        let mut block_crc = crc32fast::Hasher::new();
        block_crc.update(&payload);
        self.file.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.file
            .write_all(&block_crc.clone().finalize().to_le_bytes())?;
        self.file.write_all(&payload)?;
        self.file.flush()?;
        self.crc.combine(&block_crc);
        self.blocks += 1;
        self.size += (BLOCK_HEADER_LEN + payload.len()) as u64;
        Ok(())
    }

    /// Writes the trailer and syncs the file.
    pub fn finish(mut self, mut trailer: proto::Trailer) -> io::Result<PathBuf> {
        trailer.blocks = self.blocks;
        trailer.checksum = self.crc.clone().finalize();
        self.write(Body::Trailer(trailer))?;
        self.file.get_ref().sync_all()?;
        Ok(self.path)
    }
}

/// Where and why reading stopped before the end of a damaged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub block: u64,
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped at byte {} (block {}): {}",
            self.offset, self.block, self.reason
        )
    }
}

/// Where a reader takes its bytes from: the file itself, or a copy in memory.
trait Source: Read + Seek + Send {}
impl<T: Read + Seek + Send> Source for T {}

/// Reads blocks from a capture, one block in memory at a time: a capture grows with the length
/// of a recording (tens of MB per million events), and reading it whole made the memory of
/// every command that reads one grow with it.
pub struct Reader {
    src: Box<dyn Source>,
    /// Length of the capture and the offset of the next block in it.
    len: usize,
    pos: usize,
    /// The payload of the block being decoded, kept between blocks for its allocation.
    payload: Vec<u8>,
    block: u64,
    crc: crc32fast::Hasher,
    /// Set once a damaged block was met; no block after it is returned.
    pub damage: Option<Damage>,
    /// Whether the trailer was read and its checksum matched.
    pub complete: bool,
}

impl Reader {
    /// Opens a capture without blocking (a FIFO in its place is refused, not waited on).
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let io = |source| CaptureError::Io {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(io)?;
        Self::from_file(file, path)
    }

    /// Reads a capture from an open file, which must be a regular file.
    pub fn from_file(file: File, path: &Path) -> Result<Self, CaptureError> {
        let meta = file.metadata().map_err(|source| CaptureError::Io {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(CaptureError::NotAFile(path.to_owned()));
        }
        let len = meta.len() as usize;
        Self::from_source(Box::new(BufReader::with_capacity(1 << 20, file)), len, path)
    }

    pub fn from_bytes(data: Vec<u8>, path: &Path) -> Result<Self, CaptureError> {
        let len = data.len();
        Self::from_source(Box::new(Cursor::new(data)), len, path)
    }

    fn from_source(
        mut src: Box<dyn Source>,
        len: usize,
        path: &Path,
    ) -> Result<Self, CaptureError> {
        let mut header = [0u8; FILE_HEADER_LEN];
        if len < FILE_HEADER_LEN || src.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
            return Err(CaptureError::NotACapture(path.to_owned()));
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version > VERSION {
            return Err(CaptureError::TooNew {
                path: path.to_owned(),
                version,
            });
        }
        Ok(Self {
            src,
            len,
            pos: FILE_HEADER_LEN,
            payload: Vec::new(),
            block: 0,
            crc: crc32fast::Hasher::new(),
            damage: None,
            complete: false,
        })
    }

    /// Starts over from the first block.
    pub fn rewind(&mut self) {
        self.pos = FILE_HEADER_LEN;
        self.block = 0;
        self.crc = crc32fast::Hasher::new();
        self.damage = None;
        self.complete = false;
        if let Err(e) = self.src.seek(SeekFrom::Start(FILE_HEADER_LEN as u64)) {
            self.fail(format!("cannot read the capture again: {e}"));
        }
    }

    fn fail(&mut self, reason: impl Into<String>) -> Option<Body> {
        self.damage = Some(Damage {
            offset: self.pos as u64,
            block: self.block,
            reason: reason.into(),
        });
        None
    }

    /// The next intact block, or None at the end or at the first damage (see `damage`).
    pub fn next_block(&mut self) -> Option<Body> {
        if self.damage.is_some() || self.complete {
            return None;
        }
        let rest = self.len.saturating_sub(self.pos);
        if rest == 0 {
            return self.fail("the file ends without a trailer (recording was interrupted)");
        }
        if rest < BLOCK_HEADER_LEN {
            return self.fail("a block header is cut short");
        }
        let mut head = [0u8; BLOCK_HEADER_LEN];
        if let Err(e) = self.src.read_exact(&mut head) {
            return self.fail(format!("cannot read a block header: {e}"));
        }
        let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
        if len > MAX_BLOCK {
            return self.fail(format!("a block claims {len} bytes"));
        }
        if rest - BLOCK_HEADER_LEN < len {
            return self.fail(format!(
                "a block of {len} bytes is cut short after {} bytes",
                rest - BLOCK_HEADER_LEN
            ));
        }
        let mut payload = std::mem::take(&mut self.payload);
        payload.resize(len, 0);
        let body = self.decode(&mut payload, crc);
        self.payload = payload;
        body
    }

    fn decode(&mut self, payload: &mut [u8], crc: u32) -> Option<Body> {
        if let Err(e) = self.src.read_exact(payload) {
            return self.fail(format!("cannot read a block: {e}"));
        }
        let payload = &*payload;
        // Under the fuzzer the checksum is not enforced, so that mutated payloads reach the
        // protobuf decoder and the aggregation instead of all stopping here.
        if !cfg!(fuzzing) && crc32fast::hash(payload) != crc {
            return self.fail("checksum mismatch");
        }
        let block = match proto::Block::decode(payload) {
            Ok(b) => b,
            Err(e) => return self.fail(format!("undecodable block: {e}")),
        };
        let Some(body) = block.body else {
            return self.fail("empty block");
        };
        if let Body::Trailer(t) = &body {
            let expected = self.crc.clone().finalize();
            if !cfg!(fuzzing) && (t.checksum != expected || t.blocks != self.block) {
                return self.fail("the trailer does not match the blocks before it");
            }
            self.complete = true;
        } else {
            self.crc.update(payload);
        }
        self.pos += BLOCK_HEADER_LEN + payload.len();
        self.block += 1;
        Some(body)
    }
}

impl Iterator for Reader {
    type Item = Body;
    fn next(&mut self) -> Option<Body> {
        self.next_block()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("c.bar");
        let meta = proto::Meta {
            hostname: "h".into(),
            ..Default::default()
        };
        let mut w = Writer::create(&path, meta).unwrap();
        let events = proto::Events {
            events: (0..100)
                .map(|i| proto::Event {
                    ts: i,
                    kind: 1,
                    ..Default::default()
                })
                .collect(),
        };
        w.write(Body::Events(events.clone())).unwrap();
        w.write(Body::Events(events)).unwrap();
        w.finish(proto::Trailer {
            events: 200,
            ..Default::default()
        })
        .unwrap()
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "bar-capture-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_is_complete() {
        let dir = tempdir();
        let path = sample(&dir);
        let mut r = Reader::open(&path).unwrap();
        let bodies: Vec<Body> = r.by_ref().collect();
        assert_eq!(bodies.len(), 4);
        assert!(matches!(bodies[0], Body::Meta(_)));
        assert!(r.complete, "{:?}", r.damage);
        assert_eq!(r.damage, None);
    }

    #[test]
    fn every_truncation_keeps_the_intact_prefix() {
        let dir = tempdir();
        let data = std::fs::read(sample(&dir)).unwrap();
        for cut in FILE_HEADER_LEN..data.len() {
            let mut r = Reader::from_bytes(data[..cut].to_vec(), Path::new("x")).unwrap();
            let n = r.by_ref().count();
            assert!(!r.complete);
            assert!(r.damage.is_some(), "cut at {cut}");
            assert!(n <= 3);
        }
    }

    #[test]
    fn corruption_is_reported_not_panicked() {
        let dir = tempdir();
        let mut data = std::fs::read(sample(&dir)).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        let mut r = Reader::from_bytes(data, Path::new("x")).unwrap();
        let _ = r.by_ref().count();
        assert!(r.damage.unwrap().reason.contains("checksum"));
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary_with_a_mark() {
        assert_eq!(bounded_name("short".into()), "short");
        let cut = bounded_name("é".repeat(MAX_NAME));
        assert!(
            cut.len() <= MAX_NAME && cut.ends_with(CUT_MARK),
            "{}",
            cut.len()
        );
        assert_eq!(bounded_name("x".repeat(MAX_NAME)).len(), MAX_NAME);
    }

    #[test]
    fn refuses_other_files_and_newer_versions() {
        assert!(matches!(
            Reader::from_bytes(b"hello world, not a capture".to_vec(), Path::new("x")),
            Err(CaptureError::NotACapture(_))
        ));
        let mut data = MAGIC.to_vec();
        data.extend(99u32.to_le_bytes());
        data.extend([0; 4]);
        assert!(matches!(
            Reader::from_bytes(data, Path::new("x")),
            Err(CaptureError::TooNew { version: 99, .. })
        ));
    }
}
