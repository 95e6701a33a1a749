//! The journal's error type.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::Seq;

/// Everything that can go wrong when opening, appending to, replaying or verifying a journal.
///
/// Every variant names what failed (a path, a segment and byte offset, a sequence number) and its
/// message says what to do about it. File contents never cause a panic: damage is reported as
/// [`JournalError::Corrupt`], a newer format as [`JournalError::UnsupportedVersion`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A file system operation failed (opening, reading, listing, creating, truncating).
    #[error("journal I/O failed on {path}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A segment is damaged somewhere other than a torn tail.
    #[error(
        "journal segment {segment} is corrupt at byte offset {offset}: {reason}; the records \
         before this offset are intact"
    )]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset in the segment file of the damaged header or frame.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },

    /// A segment was written with a newer format version than this build understands.
    #[error(
        "journal segment {segment} has format version {found}, but this build reads only up to \
         version {supported}: it was written by a newer fsnode; upgrade fsnode to read it"
    )]
    UnsupportedVersion {
        /// The segment file.
        segment: PathBuf,
        /// The version in the segment header.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },

    /// A record encodes to more bytes than [`Options::max_record_bytes`](crate::Options).
    #[error(
        "record of {len} bytes exceeds the journal's limit of {max} bytes; make the record \
         smaller or raise Options::max_record_bytes"
    )]
    RecordTooLarge {
        /// Encoded (CBOR) length of the record.
        len: usize,
        /// The configured limit.
        max: u32,
    },

    /// A record could not be encoded as CBOR (its `Serialize` implementation failed).
    #[error("record could not be encoded as CBOR: {reason}")]
    Encode {
        /// The encoder's message.
        reason: String,
    },

    /// A frame is intact (its CRC matches) but its CBOR payload does not decode into the
    /// record type: the journal was written by a program with a different record type.
    #[error(
        "record seq {seq} in journal segment {segment} at byte offset {offset} is intact but does \
         not decode into the expected record type: {reason}; was it written by a different \
         fsnode version?"
    )]
    Decode {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the frame in the segment file.
        offset: u64,
        /// Sequence number of the record.
        seq: Seq,
        /// The decoder's message.
        reason: String,
    },

    /// Another writer holds the journal directory's lock file.
    #[error(
        "journal directory {dir} is locked by another writer (is another fsnode running on it?); \
         stop that process, or read the journal with a read-only Reader"
    )]
    Locked {
        /// The journal directory.
        dir: PathBuf,
    },

    /// The journal was closed; its writer thread has stopped and accepts no more records.
    #[error("the journal is closed: its writer thread has stopped and accepts no more records")]
    Closed,

    /// A write or fsync of a batch failed. The journal refuses every later append, because after
    /// a failed fsync the state of the file on disk is unknown and cannot be retried safely.
    #[error(
        "journal {op} of {path} failed, so records from seq {first_seq} on may not be durable \
         and the journal accepts no more appends; fix the cause (disk full? device error?), then \
         reopen the journal (restart the node), which recovers what reached the disk"
    )]
    Poisoned {
        /// The file or directory the failed operation was on.
        path: PathBuf,
        /// The operation that failed ("write", "fsync", "create segment", ...).
        op: &'static str,
        /// The first sequence number that is not durable.
        first_seq: Seq,
        /// The operating system's error (shared: every waiting append receives it).
        #[source]
        source: Arc<io::Error>,
    },

    /// Every sequence number up to `u64::MAX` has been used.
    #[error("the journal has used every sequence number; start a new journal")]
    SequenceExhausted,

    /// The [`Options`](crate::Options) passed to `open` are unusable.
    #[error("invalid journal options: {reason}")]
    InvalidOptions {
        /// What is wrong with them.
        reason: String,
    },
}

impl JournalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        JournalError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        segment: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        JournalError::Corrupt {
            segment: segment.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// A failed file system operation of the writer, before it is attributed to a sequence number.
#[derive(Debug)]
pub(crate) struct OpFailure {
    pub(crate) path: PathBuf,
    pub(crate) op: &'static str,
    pub(crate) source: io::Error,
}

impl OpFailure {
    pub(crate) fn new(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        OpFailure {
            path: path.into(),
            op,
            source,
        }
    }

    /// The failure as the cause of a poisoned journal: records from `first_seq` on are lost.
    pub(crate) fn poison(self, first_seq: Seq) -> Failure {
        Failure {
            path: self.path,
            op: self.op,
            first_seq,
            source: Arc::new(self.source),
        }
    }
}

/// The cause of a poisoned journal, shared by every append that fails because of it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) path: PathBuf,
    pub(crate) op: &'static str,
    pub(crate) first_seq: Seq,
    pub(crate) source: Arc<io::Error>,
}

impl Failure {
    pub(crate) fn to_error(&self) -> JournalError {
        JournalError::Poisoned {
            path: self.path.clone(),
            op: self.op,
            first_seq: self.first_seq,
            source: Arc::clone(&self.source),
        }
    }
}
