//! [`Journal`]: the writer handle, and recovery when it opens a directory.

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::JournalError;
use crate::replay::Replay;
use crate::scan::{self, FrameScan, REPLAY_BUFFER, ScanRules, Source};
use crate::segment::{self, HEADER_LEN, SegmentFile};
use crate::ticket::Pending;
use crate::writer::{
    Core, HistorySegment, Layout, SegmentMeta, Writer, retired_prefix, wall_clock,
};
use crate::{OpenReport, Options, RecordKind, Seq, Stats, TornTail};

/// Name of the advisory lock file in a journal directory.
pub const LOCK_FILE: &str = "journal.lock";

thread_local! {
    /// Reused encoding buffer, so appending does not allocate per record.
    static ENCODE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The writer handle of a journal directory.
///
/// `Journal` is cheap to clone (an `Arc` inside) and can be shared between threads; all clones
/// feed the same writer thread. Only one `Journal` may have a directory open at a time (an
/// advisory `flock` on `journal.lock`); readers use [`Reader`](crate::Reader), which takes no
/// lock and never modifies files.
///
/// The writer thread stops, after committing everything queued, when [`Journal::close`] is called
/// or when the last clone is dropped.
pub struct Journal<R> {
    owner: Arc<Owner>,
    _record: PhantomData<fn(R) -> R>,
}

impl<R> Clone for Journal<R> {
    fn clone(&self) -> Self {
        Journal {
            owner: Arc::clone(&self.owner),
            _record: PhantomData,
        }
    }
}

impl<R> std::fmt::Debug for Journal<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.owner.core.dir)
            .finish_non_exhaustive()
    }
}

struct Owner {
    core: Arc<Core>,
    thread: Mutex<Option<JoinHandle<Result<(), JournalError>>>>,
    lock: Mutex<Option<File>>,
}

impl Owner {
    /// Stops the writer after it has committed everything queued; releases the directory lock.
    fn shutdown(&self) -> Result<(), JournalError> {
        self.core.request_close();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let result = match thread {
            Some(handle) => handle.join().unwrap_or(Err(JournalError::Closed)),
            None => Ok(()),
        };
        self.lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match self.core.poisoned() {
            Some(poison) => Err(poison),
            None => result,
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl<R: Serialize + DeserializeOwned + Send + 'static> Journal<R> {
    /// Opens (creating if needed) the journal in `dir` for writing.
    ///
    /// Recovery happens here. Every segment from the newest intact snapshot on is checked frame
    /// by frame; damage anywhere but at the tail is [`JournalError::Corrupt`] (or another error)
    /// and then nothing is modified. Otherwise segments older than the newest snapshot (a
    /// compaction interrupted by a crash) and leftover temporary files are deleted, and a torn
    /// tail of the last segment is truncated and described in [`OpenReport::truncated_tail`].
    pub fn open(dir: &Path, opts: Options) -> Result<(Self, OpenReport), JournalError> {
        opts.validate()?;
        fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let recovered = recover(dir, &opts)?;

        let next_seq = recovered.next_seq;
        let last = recovered.segments.last().map(|m| m.file.clone());
        let Some(last) = last else {
            // recover() always leaves at least one segment.
            return Err(JournalError::corrupt(dir, 0, "no segment after recovery"));
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&last.path)
            .map_err(|e| JournalError::io(&last.path, e))?;
        let layout = Layout {
            segments: recovered.segments,
            written: recovered.end,
        };
        let report = OpenReport {
            segments: layout.segments.len(),
            records: recovered.records,
            last_seq: recovered.last_seq,
            truncated_tail: recovered.torn,
            removed_segments: recovered.removed,
        };
        let core = Arc::new(Core::new(
            dir.to_path_buf(),
            opts,
            next_seq,
            recovered.last_seq,
            layout,
        ));
        let writer = Writer::new(
            Arc::clone(&core),
            file,
            last.path.clone(),
            recovered.end,
            recovered.last_frames,
        )
        .map_err(|e| JournalError::io(&last.path, e))?;
        let handle = std::thread::Builder::new()
            .name("fsnode-journal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| JournalError::io(dir, e))?;
        let journal = Journal {
            owner: Arc::new(Owner {
                core,
                thread: Mutex::new(Some(handle)),
                lock: Mutex::new(Some(lock)),
            }),
            _record: PhantomData,
        };
        Ok((journal, report))
    }

    /// Queues `record`; returns its sequence number and a ticket that resolves once it is durable.
    ///
    /// The record is encoded (and checked against [`Options::max_record_bytes`]) before a
    /// sequence number is assigned, so a rejected record leaves no gap. Records appended by one
    /// thread are durable in order; a [`Pending`] resolving means every earlier record is
    /// durable too.
    pub fn append(&self, record: &R) -> Result<Pending, JournalError> {
        self.push(record, RecordKind::Event)
    }

    /// Appends a snapshot: a record that replaces everything before it.
    ///
    /// The snapshot becomes the first frame of a new segment; once it is durable, every older
    /// segment is deleted (before the ticket resolves), and [`Journal::replay`] starts at it.
    /// The caller must make sure `snapshot` includes the effect of every record appended before
    /// it (in a concurrent program: no append may race with taking the snapshot), because those
    /// records are gone once it is durable.
    pub fn snapshot(&self, snapshot: &R) -> Result<Pending, JournalError> {
        self.push(snapshot, RecordKind::Snapshot)
    }

    /// Appends a snapshot written in parts: `parts` together replace everything before them.
    ///
    /// Use it for a state too large for one record: each part must fit in
    /// [`Options::max_record_bytes`], and all parts are checked before any is queued. They get
    /// consecutive sequence numbers and are the first frames of a new segment (kind 3, the last
    /// one kind 2); the snapshot counts only once its last part is durable, and a crash before
    /// that leaves the history as it was (the incomplete snapshot is dropped when the journal
    /// is next opened). Replay yields every part, in order. One part is [`Journal::snapshot`].
    pub fn snapshot_parts(&self, parts: &[R]) -> Result<Pending, JournalError> {
        self.snapshot_stream(|| parts.iter())
    }

    /// [`Journal::snapshot_parts`] for a snapshot made part by part: `parts()` yields the parts
    /// (the same ones each time it is called), and memory holds one part at a time and about
    /// 4 MiB of queued frames, whatever the snapshot's size.
    ///
    /// `parts` is called twice: once to check every part (nothing is queued unless all fit),
    /// then to stream them to the writer. Other appends wait meanwhile, so the parts stay
    /// consecutive. Should the second pass fail after some parts were queued (it yields other
    /// parts than the first, or the journal fails), the journal is poisoned rather than let
    /// anything follow a half-written snapshot; reopening it drops that snapshot.
    pub fn snapshot_stream<F, I>(&self, parts: F) -> Result<Pending, JournalError>
    where
        F: Fn() -> I,
        I: IntoIterator,
        I::Item: std::borrow::Borrow<R>,
    {
        use std::borrow::Borrow;
        let core = &self.owner.core;
        let max = core.opts.max_record_bytes;
        let mut buf = Vec::new();
        let mut count = 0usize;
        for part in parts() {
            buf.clear();
            encode_bounded(part.borrow(), &mut buf, max)?;
            count += 1;
        }
        if count == 0 {
            return Err(JournalError::Encode {
                reason: "a snapshot needs at least one part".into(),
            });
        }
        core.begin_stream()?;
        let mut first_seq = None;
        let mut queued = 0usize;
        let mut stream = || -> Result<Pending, JournalError> {
            let mut last = None;
            for part in parts().into_iter().take(count) {
                buf.clear();
                encode_bounded(part.borrow(), &mut buf, max)?;
                queued += 1;
                let kind = if queued == count {
                    RecordKind::Snapshot
                } else {
                    RecordKind::SnapshotPart
                };
                let pending = core.enqueue_streamed(&buf, kind)?;
                first_seq.get_or_insert(pending.seq);
                last = Some(pending);
            }
            match last {
                Some(pending) if queued == count => Ok(pending),
                _ => Err(JournalError::Encode {
                    reason: format!(
                        "the snapshot's parts changed: {count} checked, then {queued} given"
                    ),
                }),
            }
        };
        let result = stream();
        if let (Err(e), Some(first_seq)) = (&result, first_seq)
            && core.poisoned().is_none()
        {
            core.poison_unfinished_snapshot(first_seq, e);
        }
        core.end_stream();
        result
    }

    fn push(&self, record: &R, kind: RecordKind) -> Result<Pending, JournalError> {
        let core = &self.owner.core;
        let max = core.opts.max_record_bytes;
        let encode_and_queue = |buf: &mut Vec<u8>| {
            buf.clear();
            encode_bounded(record, buf, max)?;
            core.enqueue(buf, kind)
        };
        ENCODE_BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                let result = encode_and_queue(&mut buf);
                // Do not keep a huge buffer around after an occasional huge record.
                if buf.capacity() > 1024 * 1024 {
                    *buf = Vec::new();
                }
                result
            }
            // Re-entered (a Serialize impl that appends): use a fresh buffer.
            Err(_) => encode_and_queue(&mut Vec::new()),
        })
    }

    /// The highest sequence number assigned so far, durable or not; `None` before the first
    /// record. The next append gets `last_seq + 1`.
    pub fn last_seq(&self) -> Option<Seq> {
        self.owner.core.last_seq()
    }

    /// Counters of the writer (records and bytes committed, batches, fsyncs, ...).
    pub fn stats(&self) -> Stats {
        self.owner.core.stats()
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.owner.core.dir
    }

    /// Replays the journal from the newest snapshot (yielded first, as
    /// [`RecordKind::Snapshot`]), then every record after it; from the first record if there is
    /// no snapshot.
    ///
    /// Reads from disk and includes every record this journal has written so far, durable or
    /// not (a record still queued in memory is not included).
    pub fn replay(&self) -> Result<Replay<R>, JournalError> {
        self.replay_inner(None)
    }

    /// Replays the records with sequence number `seq` or higher that still exist, in order.
    ///
    /// Records before the newest snapshot have been deleted by compaction: if `seq` is older than
    /// the oldest remaining record, the replay starts at the oldest remaining record (the newest
    /// snapshot), so callers can tell a gap by comparing the first `Record::seq` with `seq`.
    pub fn replay_from(&self, seq: Seq) -> Result<Replay<R>, JournalError> {
        self.replay_inner(Some(seq))
    }

    fn replay_inner(&self, from: Option<Seq>) -> Result<Replay<R>, JournalError> {
        let core = &self.owner.core;
        // Files are opened under the layout lock so that a concurrent compaction cannot delete
        // them in between; once open they stay readable.
        let layout = core.lock_layout();
        let start = match from {
            None => layout.newest_snapshot().unwrap_or(0),
            Some(seq) => layout
                .segments
                .iter()
                .rposition(|m| m.file.first_seq <= seq)
                .unwrap_or(0),
        };
        let count = layout.segments.len();
        let mut sources = Vec::with_capacity(count.saturating_sub(start));
        for (i, meta) in layout.segments.iter().enumerate().skip(start) {
            let limit = (i + 1 == count).then_some(layout.written);
            sources.push(Source::open(&meta.file, limit)?);
        }
        drop(layout);
        let rules = ScanRules {
            max_record_bytes: core.opts.max_record_bytes,
            tail_may_be_torn: false,
            buffer: REPLAY_BUFFER,
        };
        Ok(Replay::new(sources, rules, from.unwrap_or(0)))
    }

    /// Commits everything queued, fsyncs it, stops the writer thread and releases the directory
    /// lock. Other clones of this journal get [`JournalError::Closed`] from then on.
    ///
    /// Returns the error that poisoned the journal, if a write or fsync ever failed.
    pub fn close(self) -> Result<(), JournalError> {
        self.owner.shutdown()
    }

    #[cfg(test)]
    pub(crate) fn core(&self) -> &Core {
        &self.owner.core
    }
}

/// Encodes one record (CBOR) into `buf`, refusing one larger than `max` bytes.
fn encode_bounded<T: Serialize>(
    value: &T,
    buf: &mut Vec<u8>,
    max: u32,
) -> Result<(), JournalError> {
    ciborium::into_writer(value, &mut *buf).map_err(|e| JournalError::Encode {
        reason: e.to_string(),
    })?;
    if buf.len() > max as usize {
        return Err(JournalError::RecordTooLarge {
            len: buf.len(),
            max,
        });
    }
    Ok(())
}

pub(crate) fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| JournalError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(JournalError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(JournalError::io(&path, e)),
    }
}

/// What recovery leaves for the writer.
struct Recovered {
    segments: Vec<SegmentMeta>,
    /// End of the data in the last segment: where the writer appends.
    end: u64,
    /// Frames in the last segment.
    last_frames: u64,
    next_seq: Seq,
    last_seq: Option<Seq>,
    records: u64,
    torn: Option<TornTail>,
    removed: usize,
}

/// Brings a journal directory into a state the writer can append to (see [`Journal::open`]).
fn recover(dir: &Path, opts: &Options) -> Result<Recovered, JournalError> {
    let listing = segment::list(dir)?;
    let mut segments = listing.segments;
    if segments.is_empty() {
        let (_, path) =
            segment::create(dir, 1, 0).map_err(|op| JournalError::io(op.path, op.source))?;
        segments.push(SegmentFile { path, first_seq: 1 });
    }

    // A snapshot in parts whose last part never became durable (a crash while it was being
    // written) is dropped: none of its tickets resolved, and the history before it still holds
    // the state. It can only be the final segment's content, so it is truncated to the header.
    let mut dropped_snapshot = None;
    if let Some(last) = segments.last()
        && scan::segment_start(last, true, opts.max_record_bytes)?
            == scan::SegmentStart::IncompleteSnapshot
    {
        let file = OpenOptions::new()
            .write(true)
            .open(&last.path)
            .map_err(|e| JournalError::io(&last.path, e))?;
        let bytes = file
            .metadata()
            .map_err(|e| JournalError::io(&last.path, e))?
            .len()
            .saturating_sub(HEADER_LEN);
        drop(file);
        truncate(&last.path, HEADER_LEN)?;
        dropped_snapshot = Some(TornTail {
            segment: last.path.clone(),
            offset: HEADER_LEN,
            bytes,
            reason: "a snapshot written in parts whose last part never became durable".into(),
        });
    }

    // Check everything from the newest snapshot on before modifying anything.
    let snapshot = scan::newest_snapshot(&segments, opts.max_record_bytes)?;
    let start = snapshot.unwrap_or(0);
    let mut sources = Vec::with_capacity(segments.len() - start);
    for seg in &segments[start..] {
        sources.push(Source::open(seg, None)?);
    }
    let rules = ScanRules {
        max_record_bytes: opts.max_record_bytes,
        tail_may_be_torn: true,
        buffer: REPLAY_BUFFER,
    };
    let mut scan = FrameScan::new(sources, rules);
    let mut records = 0u64;
    let mut last_seq = None;
    while let Some(frame) = scan.next()? {
        records += 1;
        last_seq = Some(frame.seq);
    }

    // Leftovers of an interrupted segment creation, and segments that a crash between a
    // snapshot becoming durable and the deletion of the segments before it left behind.
    for tmp in &listing.temporaries {
        remove_file(tmp)?;
    }
    // History (the segments before the newest snapshot) is kept as the retention says.
    let mut history = Vec::with_capacity(start);
    for (i, seg) in segments[..start].iter().enumerate() {
        let starts_with_snapshot = i == 0
            || scan::segment_start(seg, false, opts.max_record_bytes)?
                == scan::SegmentStart::Snapshot;
        history.push(SegmentMeta {
            file: seg.clone(),
            starts_with_snapshot,
        });
    }
    let facts: Vec<HistorySegment> = history.iter().map(HistorySegment::of).collect();
    let removed = retired_prefix(&facts, &opts.retention, wall_clock());
    for old in segments.drain(..removed) {
        remove_file(&old.path)?;
    }
    let history_flags: Vec<bool> = history
        .iter()
        .skip(removed)
        .map(|m| m.starts_with_snapshot)
        .collect();
    if removed > 0 || !listing.temporaries.is_empty() {
        segment::sync_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    }

    let last = segments
        .last()
        .cloned()
        .ok_or_else(|| JournalError::corrupt(dir, 0, "no segment to recover"))?;
    let torn = scan.torn_tail().cloned().or(dropped_snapshot);
    let (end, last_frames, next_seq) = match &torn {
        Some(t) if t.offset < HEADER_LEN => {
            // The last segment lost (part of) its header: write a fresh one. Its name says which
            // seq it starts at; that must continue the previous segment.
            if let Some(expected) = scan.next_seq()
                && segments.len() > 1
                && expected != last.first_seq
            {
                return Err(JournalError::corrupt(
                    &last.path,
                    0,
                    format!(
                        "the segment's header is missing and its name says seq {} but seq {expected} \
                         follows the previous segment",
                        last.first_seq
                    ),
                ));
            }
            segment::create(dir, last.first_seq, 0)
                .map_err(|op| JournalError::io(op.path, op.source))?;
            (HEADER_LEN, 0, last.first_seq)
        }
        Some(t) => {
            truncate(&last.path, t.offset)?;
            let next = scan.next_seq().unwrap_or(last.first_seq);
            (t.offset, scan.last_segment_frames(), next)
        }
        None => {
            let end = scan.end_of_data().unwrap_or(HEADER_LEN);
            let next = scan.next_seq().unwrap_or(last.first_seq);
            (end, scan.last_segment_frames(), next)
        }
    };

    let segments = segments
        .into_iter()
        .enumerate()
        .map(|(i, file)| SegmentMeta {
            file,
            starts_with_snapshot: match history_flags.get(i) {
                Some(flag) => *flag,
                None => snapshot.is_some() && i == history_flags.len(),
            },
        })
        .collect();
    Ok(Recovered {
        segments,
        end,
        last_frames,
        next_seq,
        last_seq,
        records,
        torn,
        removed,
    })
}

fn remove_file(path: &Path) -> Result<(), JournalError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JournalError::io(path, e)),
    }
}

fn truncate(path: &Path, len: u64) -> Result<(), JournalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io(path, e))?;
    file.set_len(len).map_err(|e| JournalError::io(path, e))?;
    file.sync_all().map_err(|e| JournalError::io(path, e))
}
