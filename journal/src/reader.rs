//! [`Reader`]: read-only access to a journal directory, live or copied.

use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::JournalError;
use crate::replay::{DECODE_SCRATCH, Replay};
use crate::scan::{self, FrameScan, REPLAY_BUFFER, ScanRules, Source};
use crate::segment::{self, SegmentFile};
use crate::{Options, RecordKind, Seq, VerifyReport};

/// How often a read retries when a segment it listed disappears before it could open it (a live
/// writer compacted the journal in between).
const LIST_ATTEMPTS: usize = 5;

/// Read-only access to a journal directory.
///
/// A `Reader` takes no lock and never creates, modifies or deletes a file, so it can read a copy
/// of a journal, or the directory of a running node. A torn tail is reported (by
/// [`Reader::verify`] and [`Replay::torn_tail`]) instead of truncated; on a live journal, a batch
/// the writer is in the middle of writing can look like a torn tail.
///
/// Segments that a crash left behind before the newest snapshot are skipped by
/// [`Reader::replay`] but still read by [`Reader::replay_from`] and [`Reader::verify`].
pub struct Reader<R> {
    dir: PathBuf,
    pub(crate) opts: Options,
    _record: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned> Reader<R> {
    /// Opens the journal in `dir` for reading. Fails if `dir` is not a readable directory.
    pub fn open(dir: &Path, opts: Options) -> Result<Self, JournalError> {
        opts.validate()?;
        let meta = std::fs::metadata(dir).map_err(|e| JournalError::io(dir, e))?;
        if !meta.is_dir() {
            return Err(JournalError::io(
                dir,
                io::Error::new(io::ErrorKind::NotADirectory, "a journal is a directory"),
            ));
        }
        Ok(Reader {
            dir: dir.to_path_buf(),
            opts,
            _record: PhantomData,
        })
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replays from the newest snapshot (yielded first), then every record after it; from the
    /// first record if there is no snapshot. Same semantics as [`Journal::replay`](crate::Journal::replay).
    pub fn replay(&self) -> Result<Replay<R>, JournalError> {
        let max = self.opts.max_record_bytes;
        let start =
            |segments: &[SegmentFile]| Ok(scan::newest_snapshot(segments, max)?.unwrap_or(0));
        self.open_replay(start, 0)
    }

    /// Replays the records with sequence number `seq` or higher that still exist. If `seq` is
    /// older than the oldest remaining record, starts at the oldest remaining record. Same
    /// semantics as [`Journal::replay_from`](crate::Journal::replay_from).
    pub fn replay_from(&self, seq: Seq) -> Result<Replay<R>, JournalError> {
        self.open_replay(
            |segments| {
                Ok(segments
                    .iter()
                    .rposition(|s| s.first_seq <= seq)
                    .unwrap_or(0))
            },
            seq,
        )
    }

    fn open_replay(
        &self,
        start: impl Fn(&[SegmentFile]) -> Result<usize, JournalError>,
        from: Seq,
    ) -> Result<Replay<R>, JournalError> {
        let sources = self.open_sources(start)?;
        Ok(Replay::new(sources, self.rules(), from))
    }

    fn rules(&self) -> ScanRules {
        ScanRules {
            max_record_bytes: self.opts.max_record_bytes,
            tail_may_be_torn: true,
            buffer: REPLAY_BUFFER,
        }
    }

    /// Lists the segments, picks where to start, and opens every segment from there on. Retries
    /// if a listed segment vanished in between (a live writer's compaction).
    fn open_sources(
        &self,
        start: impl Fn(&[SegmentFile]) -> Result<usize, JournalError>,
    ) -> Result<Vec<Source>, JournalError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = segment::list(&self.dir).and_then(|listing| {
                let segments = listing.segments;
                let first = start(&segments)?;
                segments
                    .get(first..)
                    .unwrap_or_default()
                    .iter()
                    .map(|s| Source::open(s, None))
                    .collect()
            });
            match result {
                Err(JournalError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && attempt < LIST_ATTEMPTS => {}
                other => return other,
            }
        }
    }

    /// Reads every frame of every segment: checks headers, CRCs, sequence continuity and snapshot
    /// placement, and decodes every payload into `R`.
    ///
    /// Returns the first problem as an error ([`JournalError::Corrupt`] with the segment and byte
    /// offset, [`JournalError::UnsupportedVersion`], [`JournalError::Decode`]); a torn tail is not
    /// an error but is described in [`VerifyReport::torn_tail`]. Modifies nothing.
    pub fn verify(&self) -> Result<VerifyReport, JournalError> {
        let sources = self.open_sources(|_| Ok(0))?;
        let segments = sources.len();
        let mut scan = FrameScan::new(sources, self.rules());
        let mut report = VerifyReport {
            segments,
            records: 0,
            first_seq: None,
            last_seq: None,
            snapshots: 0,
            torn_tail: None,
        };
        let mut scratch = vec![0; DECODE_SCRATCH];
        while let Some(frame) = scan.next()? {
            if let Err(e) =
                ciborium::de::from_reader_with_buffer::<R, _>(frame.payload, &mut scratch)
            {
                return Err(JournalError::Decode {
                    segment: frame.segment.to_path_buf(),
                    offset: frame.offset,
                    seq: frame.seq,
                    reason: e.to_string(),
                });
            }
            report.records += 1;
            report.first_seq.get_or_insert(frame.seq);
            report.last_seq = Some(frame.seq);
            if frame.kind == RecordKind::Snapshot {
                report.snapshots += 1;
            }
        }
        report.torn_tail = scan.torn_tail().cloned();
        Ok(report)
    }
}
