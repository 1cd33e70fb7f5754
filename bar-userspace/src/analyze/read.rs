//! The one reader of a capture after it is written: report, diff, export, info and baselines
//! all take what it gives. A first pass outlines the capture (metadata, markers, where it ends,
//! which families it recorded); every later pass reads the same open file or bytes again from
//! the start, rather than opening the path anew or copying the bytes.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use bar_ebpf_common::Family;

use super::{
    Profile, Slice,
    phases::{self, PhaseError, WallPhase},
};
use crate::capture::{Body, CaptureError, Damage, Reader, proto};

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Phases(#[from] PhaseError),
}

/// What a first pass over a capture tells: its metadata and markers, where it ends, which
/// families it recorded, and where it is damaged.
#[derive(Debug, Default)]
pub struct Outline {
    pub meta: proto::Meta,
    pub markers: Vec<proto::Marker>,
    /// The end the trailer gives, when the recording ended properly.
    pub trailer_end: Option<u64>,
    /// Just past the last event.
    pub events_end: u64,
    /// Just past the last event, or the last marker or counters if they came later.
    pub last_seen: u64,
    /// Families that attached or have events.
    pub families: BTreeSet<Family>,
    /// Where reading stopped in a damaged file.
    pub damage: Option<Damage>,
}

impl Outline {
    /// End of the recording: the trailer's, or the last thing known to happen in a capture cut
    /// short. Phases end there at the latest.
    pub fn end(&self) -> u64 {
        self.trailer_end
            .unwrap_or(self.last_seen)
            .max(self.meta.start_ns)
    }

    /// End of the time the capture covers as a range `[start, end)`: past its last event and
    /// past its recorded end, whichever is later (the whole of a capture that `diff` compares).
    pub fn range_end(&self) -> u64 {
        self.events_end
            .max(self.trailer_end.map_or(0, |e| e.saturating_add(1)))
            .max(self.meta.start_ns.saturating_add(1))
    }
}

/// A capture, open and outlined.
pub struct Capture {
    path: PathBuf,
    /// Each pass rewinds it; passes take turns (none outlives the call that made it).
    reader: RefCell<Reader>,
    outline: Outline,
}

impl Capture {
    /// Opens a capture file and outlines it. A file that holds no metadata opens too (`info`
    /// and the fuzzer look at anything); see [`Capture::require_meta`].
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        Ok(Self::outlined(Reader::open(path)?, path))
    }

    /// A capture held in memory (read whole by `diff`, which also reads folded files).
    pub fn from_bytes(data: Vec<u8>, path: &Path) -> Result<Self, CaptureError> {
        Ok(Self::outlined(Reader::from_bytes(data, path)?, path))
    }

    fn outlined(mut reader: Reader, path: &Path) -> Self {
        let mut o = Outline::default();
        while let Some(body) = reader.next_block() {
            match body {
                Body::Meta(m) => o.meta = m,
                Body::Marker(m) => {
                    o.last_seen = o.last_seen.max(m.ts);
                    o.markers.push(m);
                }
                Body::Trailer(t) => o.trailer_end = Some(t.end_ns),
                Body::Counters(c) => o.last_seen = o.last_seen.max(c.ts),
                Body::Events(e) => {
                    for ev in &e.events {
                        let past = ev.ts.saturating_add(1);
                        o.events_end = o.events_end.max(past);
                        o.last_seen = o.last_seen.max(past);
                        o.families.extend(Family::of_kind(ev.kind));
                    }
                }
                _ => {}
            }
        }
        let attached = o.meta.families.iter().filter(|f| !f.method.is_empty());
        let attached: Vec<Family> = attached
            .filter_map(|f| Family::from_name(&f.name))
            .collect();
        o.families.extend(attached);
        o.damage = reader.damage.clone();
        Self {
            path: path.to_owned(),
            reader: RefCell::new(reader),
            outline: o,
        }
    }

    /// The capture, if bar wrote it: without metadata it was cut before its first block, or
    /// is not a capture of bar's.
    pub fn require_meta(self) -> Result<Self, CaptureError> {
        if self.outline.meta.bar_version.is_empty() {
            return Err(CaptureError::without_meta(
                &self.path,
                self.outline.damage.as_ref(),
            ));
        }
        Ok(self)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn outline(&self) -> &Outline {
        &self.outline
    }

    /// Aggregates every event into the whole-capture views and its phase's views, the phases
    /// from `file_phases` when given, else from the capture's markers. A damaged file
    /// aggregates up to the damage, which is kept in the profile's `damage`.
    pub fn profile(&self, file_phases: Option<&[WallPhase]>) -> Result<Profile, PhaseError> {
        let o = &self.outline;
        let (start, end) = (o.meta.start_ns, o.end());
        let offset = o.meta.monotonic_to_realtime_ns;
        let (phases, notes) = match file_phases {
            Some(fp) => phases::fit_wall(fp, offset, start, end)?,
            None => {
                let wall = |t: u64| crate::system::rfc3339(i128::from(t) + i128::from(offset));
                phases::fit(phases::from_markers(&o.markers, end), start, end, wall)?
            }
        };
        let mut p = Profile::default();
        p.phase_views = phases.iter().map(|_| BTreeMap::new()).collect();
        p.phases = phases;
        p.phase_notes = notes;
        self.aggregate(&mut p);
        Ok(p)
    }

    /// The whole capture aggregated with the phases of its own markers, which always lie
    /// within it.
    pub fn whole(&self) -> Profile {
        self.profile(None).unwrap_or_default()
    }

    /// Aggregates the capture (without phases), each event also into every slice whose
    /// `[start, end)` holds its time.
    pub fn sliced(&self, slices: Vec<Slice>) -> Profile {
        let mut p = Profile::default();
        p.slices = slices;
        self.aggregate(&mut p);
        p
    }

    fn aggregate(&self, p: &mut Profile) {
        let mut reader = self.reader.borrow_mut();
        reader.rewind();
        while let Some(body) = reader.next_block() {
            p.add_block(body);
        }
        p.damage = reader.damage.clone();
    }

    /// Every event, read again from the start (for what aggregation leaves out, as `export`
    /// needs). The capture cannot be read otherwise while the iterator lives.
    pub fn events(&self) -> impl Iterator<Item = proto::Event> + '_ {
        let mut reader = self.reader.borrow_mut();
        reader.rewind();
        std::iter::from_fn(move || reader.next_block()).flat_map(|body| match body {
            Body::Events(e) => e.events,
            _ => Vec::new(),
        })
    }
}

/// Opens a capture that bar wrote and aggregates it, cut into `phases` (else its own
/// markers). The capture stays open for the passes that come after.
pub fn load(path: &Path, phases: Option<&[WallPhase]>) -> Result<(Capture, Profile), AnalyzeError> {
    let capture = Capture::open(path)?;
    let profile = capture.profile(phases)?;
    Ok((capture.require_meta()?, profile))
}
