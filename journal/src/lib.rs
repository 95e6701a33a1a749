//! fsnode's append-only journal: typed records in checksummed segment files, with group commit,
//! snapshots and crash recovery.
//!
//! Every fact the node learns is a record appended here; the node's state is the replay of the
//! journal. Records are any `R: Serialize + DeserializeOwned`, stored as CBOR.
//!
//! # Guarantees
//!
//! - **Sequence numbers.** Every record gets the next [`Seq`]: the first record is 1 and there
//!   are no gaps, across segments and across reopening.
//! - **Durability.** [`Journal::append`] returns a [`Pending`] that resolves (blocking with
//!   [`Pending::wait`], or as a [`Future`] on any executor) once the record
//!   has been written and `fdatasync`ed. Records become durable in sequence order.
//! - **Group commit.** One writer thread writes everything queued with one write and one
//!   `fdatasync`, so concurrent appenders share fsyncs ([`Journal::stats`] counts them).
//! - **Failure is sticky.** If a write or fsync fails, that batch and every later append fail
//!   with [`JournalError::Poisoned`]; reopening recovers what reached the disk.
//! - **Recovery.** [`Journal::open`] truncates a torn tail of the last segment (a crash while a
//!   batch was being written) and reports it; damage anywhere else is
//!   [`JournalError::Corrupt`] naming the segment and byte offset, and is never skipped.
//! - **Snapshots.** [`Journal::snapshot`] starts a new segment with a snapshot record (or, with
//!   [`Journal::snapshot_parts`], a snapshot split over several frames, so a large state never
//!   needs one record above the record limit). Once it is durable, older segments are history:
//!   kept under [`Options::retention`], then retired (deleted) a snapshot epoch at a time.
//!   [`Journal::replay`] starts at the newest complete snapshot.
//! - **Read-only access.** [`Reader`] reads a live or copied directory without locking or
//!   modifying anything, and [`Reader::verify`] checks every frame.
//! - **No panics on file contents.** Whatever bytes are in the directory, the result is a value
//!   or a [`JournalError`].
//!
//! # On-disk format (version 2; version 1 segments are read unchanged)
//!
//! A journal is a directory of segment files `NNNNNNNNNNNNNNNNNNNN.seg`, named by the zero-padded
//! sequence number of their first record, plus the lock file `journal.lock`.
//!
//! Segment header, 32 bytes: magic `b"FSNJRNL\0"`, format version (u32 LE, 2), first sequence
//! number (u64 LE), 12 reserved zero bytes. Then frames:
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32C(seq LE ‖ kind ‖ payload) | u64 LE seq | u8 kind | payload (CBOR)
//! ```
//!
//! Kind 1 is an event, kind 2 a snapshot (or the last part of one), kind 3 a snapshot part that
//! continues in the next frame. A snapshot's frames are always the first frames of its segment. A frame
//! header of 17 zero bytes ends the segment's data (segments are preallocated with zeros). The
//! crate's `README.md` is the full contract, including the torn-tail rule.
//!
//! # Example
//!
//! ```
//! use fsnode_journal::{Journal, Options, RecordKind};
//! # fn main() -> Result<(), fsnode_journal::JournalError> {
//! # let dir = tempfile::tempdir().map_err(|e| fsnode_journal::JournalError::Io { path: "tmp".into(), source: e })?;
//! let (journal, report) = Journal::<String>::open(dir.path(), Options::default())?;
//! assert_eq!(report.records, 0);
//! let seq = journal.append(&"hello".to_string())?.wait()?;
//! assert_eq!(seq, 1);
//! for record in journal.replay()? {
//!     let record = record?;
//!     assert_eq!((record.seq, record.kind, record.payload.as_str()), (1, RecordKind::Event, "hello"));
//! }
//! journal.close()?;
//! # Ok(()) }
//! ```

mod error;
mod frame;
mod journal;
mod reader;
mod repair;
mod replay;
mod scan;
mod segment;
mod ticket;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use error::JournalError;
pub use frame::FRAME_HEADER_LEN;
pub use journal::{Journal, LOCK_FILE};
pub use reader::Reader;
pub use repair::{Damage, Repaired, repair};
pub use replay::Replay;
pub use segment::{HEADER_LEN as SEGMENT_HEADER_LEN, MAGIC, VERSION as FORMAT_VERSION};
pub use ticket::Pending;

/// A record's sequence number: the first record is 1, and each record's is the previous one's
/// plus one.
pub type Seq = u64;

/// Settings of a journal. Readers and the writer of one directory should use the same
/// `max_record_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Largest encoded (CBOR) record accepted by `append` and read back. A frame on disk that
    /// claims more is treated as damaged rather than allocated for. Default 1 MiB.
    pub max_record_bytes: u32,
    /// Target segment size: once a segment holds this many bytes, the next record starts a new
    /// segment. Default 64 MiB.
    pub segment_bytes: u64,
    /// How far ahead of the data the writer preallocates the current segment (`fallocate`), so
    /// that `fdatasync` rarely has to commit a file-size change; 0 disables preallocation.
    /// Default 1 MiB. Unused space is given back when a segment is sealed or the journal closed.
    pub preallocate_bytes: u64,
    /// How much history (segments older than the newest snapshot) is kept before it is retired.
    /// Default: none (older segments are deleted as soon as a snapshot is durable).
    pub retention: Retention,
}

/// How much history a journal keeps: segments older than the newest snapshot, which
/// [`Reader::replay_from`] and [`Reader::verify`] still read but [`Journal::replay`] skips.
///
/// History is retired a snapshot epoch at a time (a segment that starts with a snapshot and
/// the segments after it up to the next snapshot), oldest first, so the oldest remaining
/// history always starts at a snapshot (or at seq 1) and folds to a complete state. An epoch
/// is retired once keeping it would make the history larger than `max_bytes`, or once its
/// newest segment was last written more than `max_age` ago.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Most bytes of history kept; 0 keeps none.
    pub max_bytes: u64,
    /// Oldest history kept (by the segment file's modification time); `None`: no age limit.
    pub max_age: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_record_bytes: 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            preallocate_bytes: 1024 * 1024,
            retention: Retention::default(),
        }
    }
}

impl Options {
    fn validate(&self) -> Result<(), JournalError> {
        if self.max_record_bytes == 0 {
            return Err(JournalError::InvalidOptions {
                reason: "max_record_bytes must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// An ordinary record.
    Event,
    /// A snapshot, or the last part of a snapshot written in parts: with the parts before it,
    /// replaces every record before it.
    Snapshot,
    /// A part of a snapshot that continues in the next frame ([`Journal::snapshot_parts`]).
    SnapshotPart,
}

/// A record read back from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<R> {
    /// Its sequence number.
    pub seq: Seq,
    /// Event or snapshot.
    pub kind: RecordKind,
    /// The decoded record.
    pub payload: R,
}

/// A damaged end of the last segment: a crash interrupted a write there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file (always the last one).
    pub segment: PathBuf,
    /// Byte offset where the damage starts: the start of the damaged frame (or 0 if the segment
    /// header itself is incomplete). The segment is (or would be) truncated here.
    pub offset: u64,
    /// Bytes from `offset` to the end of the file: dropped by [`Journal::open`].
    pub bytes: u64,
    /// What is wrong with the damaged frame.
    pub reason: String,
}

/// What [`Journal::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Segment files in the journal after recovery.
    pub segments: usize,
    /// Intact records found (from the newest snapshot on).
    pub records: u64,
    /// Sequence number of the last intact record; `None` if there is none.
    pub last_seq: Option<Seq>,
    /// The torn tail that was truncated, if any.
    pub truncated_tail: Option<TornTail>,
    /// Segments older than the newest snapshot that a crash had left behind and that were deleted.
    pub removed_segments: usize,
}

/// What [`Reader::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files.
    pub segments: usize,
    /// Intact records, in all segments.
    pub records: u64,
    /// Sequence number of the first record, if any.
    pub first_seq: Option<Seq>,
    /// Sequence number of the last intact record, if any.
    pub last_seq: Option<Seq>,
    /// Snapshot records.
    pub snapshots: u64,
    /// A torn tail at the end of the last segment (which `Journal::open` would truncate).
    pub torn_tail: Option<TornTail>,
}

/// Counters of a journal's writer since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Records made durable.
    pub records: u64,
    /// Batches committed; each is one write and one `fdatasync` of the segment.
    pub batches: u64,
    /// Bytes of frames made durable.
    pub bytes: u64,
    /// Every `fsync`/`fdatasync` of a file or directory, including those for rolling segments.
    pub fsyncs: u64,
    /// Segments created by rolling.
    pub segments_created: u64,
    /// Segments deleted by compaction.
    pub segments_removed: u64,
    /// Old segments compaction failed to delete (retried at the next snapshot or open).
    pub compaction_errors: u64,
}
