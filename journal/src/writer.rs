//! Group commit: the append queue and the writer thread that owns the current segment.
//!
//! `append` encodes its record on the caller's thread, then, under the queue lock, takes the next
//! sequence number and copies the framed record into the open batch. The writer thread swaps the
//! whole batch out, writes it with one positioned write (rolling segments where needed), calls
//! `fdatasync` once, and completes the batch's shared ticket. Appends that arrive meanwhile form
//! the next batch, so any number of waiting appenders share one fsync.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::error::{Failure, JournalError, OpFailure};
use crate::frame::{self, PayloadChecksum};
use crate::segment::{self, HEADER_LEN, SegmentFile};
use crate::ticket::{BatchGuard, BatchSlot, Outcome, Pending};
use crate::{Options, RecordKind, Retention, Seq, Stats};

/// Appends block while this many bytes are queued and not yet taken by the writer, so that
/// appenders that never wait cannot grow the queue without bound.
const QUEUE_LIMIT: usize = 64 * 1024 * 1024;

/// Queued bytes a streamed snapshot fills before it waits for the writer: its parts go out in
/// batches of about this size, so a snapshot of any size needs only this much memory.
const STREAM_LIMIT: usize = 4 * 1024 * 1024;

/// A batch buffer that grew beyond this is not kept for the next batch (one large batch must
/// not hold its memory for the journal's lifetime).
const SPARE_KEEP: usize = 8 * 1024 * 1024;

/// The state shared by every handle of a journal and its writer thread.
pub(crate) struct Core {
    pub(crate) dir: PathBuf,
    pub(crate) opts: Options,
    queue: Mutex<Queue>,
    /// Signalled when the writer has work (or must stop).
    work: Condvar,
    /// Signalled when the writer takes a batch (queue space freed).
    space: Condvar,
    pub(crate) layout: Mutex<Layout>,
    counters: Counters,
    #[cfg(test)]
    pub(crate) faults: Faults,
}

/// Fault injection for tests: make the n-th batch's fsync fail.
#[cfg(test)]
pub(crate) struct Faults {
    /// 0 = never; n = the n-th batch from now fails.
    pub(crate) fail_sync_of_batch: AtomicU64,
}

/// The segments the journal consists of, as the writer maintains them.
pub(crate) struct Layout {
    pub(crate) segments: Vec<SegmentMeta>,
    /// Bytes of the last segment written so far (durable or not); readers of this journal stop
    /// there, so they never see a frame the writer is in the middle of writing.
    pub(crate) written: u64,
}

pub(crate) struct SegmentMeta {
    pub(crate) file: SegmentFile,
    pub(crate) starts_with_snapshot: bool,
}

impl Layout {
    /// Index of the newest segment that starts with a snapshot.
    pub(crate) fn newest_snapshot(&self) -> Option<usize> {
        self.segments.iter().rposition(|m| m.starts_with_snapshot)
    }
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    batches: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    segments_created: AtomicU64,
    segments_removed: AtomicU64,
    compaction_errors: AtomicU64,
}

struct Queue {
    next_seq: Seq,
    last_seq: Option<Seq>,
    /// Framed records of the open batch.
    buf: Vec<u8>,
    /// Where each record of the open batch ends in `buf`.
    marks: Vec<Mark>,
    /// The ticket shared by the open batch.
    slot: Arc<BatchSlot>,
    state: State,
    writer_idle: bool,
    space_waiters: usize,
    /// A snapshot is being streamed ([`Core::begin_stream`]): other appends wait, so its parts
    /// stay consecutive.
    streaming: bool,
}

#[derive(Clone, Copy)]
struct Mark {
    seq: Seq,
    end: usize,
    kind: RecordKind,
}

enum State {
    Open,
    Closing,
    Closed,
    Poisoned(Arc<Failure>),
}

impl Core {
    pub(crate) fn new(
        dir: PathBuf,
        opts: Options,
        next_seq: Seq,
        last_seq: Option<Seq>,
        layout: Layout,
    ) -> Self {
        Core {
            dir,
            opts,
            queue: Mutex::new(Queue {
                next_seq,
                last_seq,
                buf: Vec::new(),
                marks: Vec::new(),
                slot: Arc::default(),
                state: State::Open,
                writer_idle: false,
                space_waiters: 0,
                streaming: false,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            layout: Mutex::new(layout),
            counters: Counters::default(),
            #[cfg(test)]
            faults: Faults {
                fail_sync_of_batch: AtomicU64::new(0),
            },
        }
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_layout(&self) -> MutexGuard<'_, Layout> {
        self.layout.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an encoded record; assigns its sequence number.
    pub(crate) fn enqueue(
        &self,
        payload: &[u8],
        kind: RecordKind,
    ) -> Result<Pending, JournalError> {
        self.enqueue_within(payload, kind, QUEUE_LIMIT, false)
    }

    /// Starts streaming a snapshot: waits for another stream to end, then holds every other
    /// append back until [`Core::end_stream`].
    pub(crate) fn begin_stream(&self) -> Result<(), JournalError> {
        let mut q = self.lock_queue();
        loop {
            match &q.state {
                State::Open => {}
                State::Poisoned(failure) => return Err(failure.to_error()),
                State::Closing | State::Closed => return Err(JournalError::Closed),
            }
            if !q.streaming {
                break;
            }
            q.space_waiters += 1;
            q = self.space.wait(q).unwrap_or_else(PoisonError::into_inner);
            q.space_waiters -= 1;
        }
        q.streaming = true;
        Ok(())
    }

    /// Queues one part of the snapshot being streamed, waiting while [`STREAM_LIMIT`] bytes
    /// are queued.
    pub(crate) fn enqueue_streamed(
        &self,
        payload: &[u8],
        kind: RecordKind,
    ) -> Result<Pending, JournalError> {
        self.enqueue_within(payload, kind, STREAM_LIMIT, true)
    }

    /// Ends the stream [`Core::begin_stream`] started; held appends go on.
    pub(crate) fn end_stream(&self) {
        self.lock_queue().streaming = false;
        self.space.notify_all();
    }

    /// A streamed snapshot stopped after some of its parts were queued: nothing may follow
    /// them (a replay would find events after an unfinished snapshot), so the journal fails
    /// closed. Reopening drops the unfinished snapshot at the tail and keeps every record.
    pub(crate) fn poison_unfinished_snapshot(&self, first_seq: Seq, why: &JournalError) {
        let source = io::Error::other(format!("a snapshot stopped half written: {why}"));
        let failure = Arc::new(OpFailure::new(&self.dir, "snapshot", source).poison(first_seq));
        self.poison(&failure);
    }

    /// Queues an encoded record once fewer than `limit` bytes are queued (or none); `streamed`:
    /// a part of the snapshot being streamed, which alone may pass while one is.
    fn enqueue_within(
        &self,
        payload: &[u8],
        kind: RecordKind,
        limit: usize,
        streamed: bool,
    ) -> Result<Pending, JournalError> {
        let crc = PayloadChecksum::precompute(payload);
        let frame_len = frame::FRAME_HEADER_LEN + payload.len();
        let mut q = self.lock_queue();
        loop {
            match &q.state {
                State::Open => {}
                State::Poisoned(failure) => return Err(failure.to_error()),
                State::Closing | State::Closed => return Err(JournalError::Closed),
            }
            let held = q.streaming && !streamed;
            if !held && (q.buf.is_empty() || q.buf.len() + frame_len <= limit) {
                break;
            }
            q.space_waiters += 1;
            q = self.space.wait(q).unwrap_or_else(PoisonError::into_inner);
            q.space_waiters -= 1;
        }
        let seq = q.next_seq;
        let Some(next) = seq.checked_add(1) else {
            return Err(JournalError::SequenceExhausted);
        };
        q.next_seq = next;
        q.last_seq = Some(seq);
        let crc = crc.finish(seq, kind.to_byte(), payload);
        frame::encode_into(&mut q.buf, seq, kind, payload, crc);
        let end = q.buf.len();
        q.marks.push(Mark { seq, end, kind });
        let slot = Arc::clone(&q.slot);
        let wake = std::mem::replace(&mut q.writer_idle, false);
        drop(q);
        if wake {
            self.work.notify_one();
        }
        Ok(Pending::new(seq, slot))
    }

    /// The highest sequence number assigned so far (durable or not).
    pub(crate) fn last_seq(&self) -> Option<Seq> {
        self.lock_queue().last_seq
    }

    /// Asks the writer to commit what is queued and stop; later appends fail with `Closed`.
    pub(crate) fn request_close(&self) {
        let mut q = self.lock_queue();
        if matches!(q.state, State::Open) {
            q.state = State::Closing;
        }
        drop(q);
        self.work.notify_all();
        self.space.notify_all();
    }

    /// The error a poisoned journal reports, if it is poisoned.
    pub(crate) fn poisoned(&self) -> Option<JournalError> {
        match &self.lock_queue().state {
            State::Poisoned(failure) => Some(failure.to_error()),
            _ => None,
        }
    }

    fn poison(&self, failure: &Arc<Failure>) {
        let mut q = self.lock_queue();
        q.state = State::Poisoned(Arc::clone(failure));
        q.buf.clear();
        q.marks.clear();
        let slot = std::mem::take(&mut q.slot);
        drop(q);
        slot.complete(Outcome::Failed(Arc::clone(failure)));
        self.space.notify_all();
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            records: c.records.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            segments_created: c.segments_created.load(Ordering::Relaxed),
            segments_removed: c.segments_removed.load(Ordering::Relaxed),
            compaction_errors: c.compaction_errors.load(Ordering::Relaxed),
        }
    }
}

/// Marks the queue closed when the writer thread ends, however it ends (even by panicking), and
/// fails whatever is still queued, so no appender waits forever.
struct ExitGuard(Arc<Core>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let mut q = self.0.lock_queue();
        if matches!(q.state, State::Open | State::Closing) {
            q.state = State::Closed;
        }
        q.buf.clear();
        q.marks.clear();
        let slot = std::mem::take(&mut q.slot);
        drop(q);
        slot.complete(Outcome::Closed);
        self.0.space.notify_all();
    }
}

/// The writer thread's state: the segment it appends to.
pub(crate) struct Writer {
    core: Arc<Core>,
    file: File,
    path: PathBuf,
    /// Logical length of the segment: where the next frame goes.
    len: u64,
    /// Length of the file, including preallocated zeros.
    alloc: u64,
    /// Frames in the current segment.
    frames: u64,
    preallocate: bool,
    spare_buf: Vec<u8>,
    spare_marks: Vec<Mark>,
    /// The last frame written was a snapshot part: the next continues that snapshot (a
    /// streamed snapshot spans batches), and a snapshot's frames never straddle segments.
    in_snapshot: bool,
}

impl Writer {
    /// A writer appending to `file` (the last segment, at `path`) from byte `len` on.
    pub(crate) fn new(
        core: Arc<Core>,
        file: File,
        path: PathBuf,
        len: u64,
        frames: u64,
    ) -> io::Result<Self> {
        let alloc = file.metadata()?.len().max(len);
        let preallocate = core.opts.preallocate_bytes > 0;
        Ok(Writer {
            core,
            file,
            path,
            len,
            alloc,
            frames,
            preallocate,
            spare_buf: Vec::new(),
            spare_marks: Vec::new(),
            in_snapshot: false,
        })
    }

    /// The writer thread's body: commit batches until closed or poisoned.
    pub(crate) fn run(mut self) -> Result<(), JournalError> {
        let core = Arc::clone(&self.core);
        let _exit = ExitGuard(Arc::clone(&core));
        loop {
            let slot = {
                let mut q = core.lock_queue();
                loop {
                    if !q.marks.is_empty() {
                        break;
                    }
                    match q.state {
                        State::Open => {}
                        State::Closing => {
                            drop(q);
                            return self.finish();
                        }
                        State::Closed | State::Poisoned(_) => return Ok(()),
                    }
                    q.writer_idle = true;
                    q = core.work.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
                q.writer_idle = false;
                std::mem::swap(&mut q.buf, &mut self.spare_buf);
                std::mem::swap(&mut q.marks, &mut self.spare_marks);
                let slot = std::mem::take(&mut q.slot);
                if q.space_waiters > 0 {
                    core.space.notify_all();
                }
                slot
            };
            let guard = BatchGuard(slot);
            let buf = std::mem::take(&mut self.spare_buf);
            let mut marks = std::mem::take(&mut self.spare_marks);
            let first_seq = marks.first().map_or(0, |m| m.seq);
            match self.commit(&buf, &marks) {
                Ok(had_snapshot) => {
                    let c = &core.counters;
                    c.records.fetch_add(marks.len() as u64, Ordering::Relaxed);
                    c.batches.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    if had_snapshot {
                        self.compact();
                    }
                    guard.0.complete(Outcome::Durable);
                }
                Err(op) => {
                    let failure = Arc::new(op.poison(first_seq));
                    core.poison(&failure);
                    guard.0.complete(Outcome::Failed(Arc::clone(&failure)));
                    return Err(failure.to_error());
                }
            }
            let mut buf = buf;
            buf.clear();
            if buf.capacity() > SPARE_KEEP {
                buf = Vec::new();
            }
            marks.clear();
            if marks.capacity() > SPARE_KEEP / 16 {
                marks = Vec::new();
            }
            self.spare_buf = buf;
            self.spare_marks = marks;
        }
    }

    /// Writes one batch, rolling segments where a snapshot or the size limit asks for it, and
    /// makes it durable. Returns whether the batch contained a snapshot.
    fn commit(&mut self, buf: &[u8], marks: &[Mark]) -> Result<bool, OpFailure> {
        let mut chunk_start = 0;
        let mut frame_start = 0;
        let mut chunk_frames = 0u64;
        let mut had_snapshot = false;
        let mut in_snapshot = self.in_snapshot;
        for mark in marks {
            let has_frames = self.frames + chunk_frames > 0;
            let full =
                self.len + (frame_start - chunk_start) as u64 >= self.core.opts.segment_bytes;
            let starts_snapshot = !in_snapshot
                && matches!(mark.kind, RecordKind::Snapshot | RecordKind::SnapshotPart);
            if has_frames && (starts_snapshot || (full && !in_snapshot)) {
                self.write(&buf[chunk_start..frame_start])?;
                self.frames += chunk_frames;
                chunk_frames = 0;
                chunk_start = frame_start;
                self.roll(mark.seq, starts_snapshot)?;
            } else if starts_snapshot {
                // The current segment is empty: the snapshot is its first frame.
                if let Some(last) = self.core.lock_layout().segments.last_mut() {
                    last.starts_with_snapshot = true;
                }
            }
            had_snapshot |= mark.kind == RecordKind::Snapshot;
            in_snapshot = mark.kind == RecordKind::SnapshotPart;
            chunk_frames += 1;
            frame_start = mark.end;
        }
        self.write(&buf[chunk_start..frame_start])?;
        self.frames += chunk_frames;
        self.in_snapshot = in_snapshot;
        self.sync_data()?;
        Ok(had_snapshot)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), OpFailure> {
        if bytes.is_empty() {
            return Ok(());
        }
        let end = self.len + bytes.len() as u64;
        if self.preallocate && end > self.alloc {
            let want = end + self.core.opts.preallocate_bytes;
            match segment::preallocate_range(&self.file, self.alloc, want - self.alloc) {
                Ok(()) => self.alloc = want,
                // Not supported here (or no space, which the write will report): stop trying.
                Err(_) => self.preallocate = false,
            }
        }
        self.file
            .write_all_at(bytes, self.len)
            .map_err(|e| OpFailure::new(&self.path, "write", e))?;
        self.len = end;
        self.alloc = self.alloc.max(end);
        self.core.lock_layout().written = end;
        Ok(())
    }

    fn sync_data(&mut self) -> Result<(), OpFailure> {
        #[cfg(test)]
        {
            let f = &self.core.faults.fail_sync_of_batch;
            let n = f.load(Ordering::Relaxed);
            if n > 0 {
                f.store(n - 1, Ordering::Relaxed);
                if n == 1 {
                    let e = io::Error::other("injected fsync failure");
                    return Err(OpFailure::new(&self.path, "fsync", e));
                }
            }
        }
        self.file
            .sync_data()
            .map_err(|e| OpFailure::new(&self.path, "fsync", e))?;
        self.core.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back the preallocated space past the data and makes the segment durable as it is.
    fn seal(&mut self) -> Result<(), OpFailure> {
        if self.alloc > self.len {
            self.file
                .set_len(self.len)
                .map_err(|e| OpFailure::new(&self.path, "truncate", e))?;
            self.alloc = self.len;
            self.file
                .sync_all()
                .map_err(|e| OpFailure::new(&self.path, "fsync", e))?;
            self.core.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            self.sync_data()
        }
    }

    /// Seals the current segment and starts segment `first_seq`.
    fn roll(&mut self, first_seq: Seq, starts_with_snapshot: bool) -> Result<(), OpFailure> {
        self.seal()?;
        let prealloc = if self.preallocate {
            self.core.opts.preallocate_bytes
        } else {
            0
        };
        let (file, path) = segment::create(&self.core.dir, first_seq, prealloc)?;
        let alloc = file
            .metadata()
            .map_err(|e| OpFailure::new(&path, "stat", e))?
            .len();
        self.core.counters.fsyncs.fetch_add(2, Ordering::Relaxed);
        self.core
            .counters
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        self.file = file;
        self.path = path.clone();
        self.len = HEADER_LEN;
        self.alloc = alloc.max(HEADER_LEN);
        self.frames = 0;
        let mut layout = self.core.lock_layout();
        layout.segments.push(SegmentMeta {
            file: SegmentFile { path, first_seq },
            starts_with_snapshot,
        });
        layout.written = HEADER_LEN;
        Ok(())
    }

    /// Retires the history (segments older than the newest snapshot) that the retention no
    /// longer covers. Failing to delete one is not a loss of data (replay starts at the
    /// snapshot either way), so it is counted and retried at the next compaction or open, not
    /// reported as an append error.
    fn compact(&mut self) {
        let core = &self.core;
        let mut layout = core.lock_layout();
        let Some(newest) = layout.newest_snapshot() else {
            return;
        };
        let history: Vec<HistorySegment> = layout.segments[..newest]
            .iter()
            .map(HistorySegment::of)
            .collect();
        let retire = retired_prefix(&history, &core.opts.retention, wall_clock());
        if retire == 0 {
            return;
        }
        let old: Vec<SegmentMeta> = layout.segments.drain(..retire).collect();
        let mut kept = Vec::new();
        for meta in old {
            match fs::remove_file(&meta.file.path) {
                Ok(()) => {
                    core.counters
                        .segments_removed
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => {
                    core.counters
                        .compaction_errors
                        .fetch_add(1, Ordering::Relaxed);
                    kept.push(meta);
                }
            }
        }
        layout.segments.splice(0..0, kept);
        drop(layout);
        match segment::sync_dir(&core.dir) {
            Ok(()) => {
                core.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                core.counters
                    .compaction_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Clean shutdown: everything queued is committed; trim the preallocated tail.
    fn finish(&mut self) -> Result<(), JournalError> {
        self.seal().map_err(|op| JournalError::Io {
            path: op.path,
            source: op.source,
        })
    }
}

/// The wall clock, for the age of history segments (file modification times are wall-clock
/// times too). The journal is IO, not the node's sans-IO core.
#[allow(clippy::disallowed_methods)]
pub(crate) fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// What retirement needs to know about one segment of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistorySegment {
    pub(crate) bytes: u64,
    /// When the segment was last written; `None` if that is unknown (then only size counts).
    pub(crate) modified: Option<SystemTime>,
    pub(crate) starts_with_snapshot: bool,
}

impl HistorySegment {
    pub(crate) fn of(meta: &SegmentMeta) -> Self {
        let stat = fs::metadata(&meta.file.path).ok();
        HistorySegment {
            bytes: stat.as_ref().map_or(0, std::fs::Metadata::len),
            modified: stat.and_then(|m| m.modified().ok()),
            starts_with_snapshot: meta.starts_with_snapshot,
        }
    }
}

/// How many of the oldest history segments `retention` retires (see [`Retention`]): whole
/// epochs (a segment that starts with a snapshot, or the very first segment, and the segments
/// after it up to the next such one), newest kept first, so that what remains always starts
/// with a snapshot or at the journal's beginning.
pub(crate) fn retired_prefix(
    history: &[HistorySegment],
    retention: &Retention,
    now: SystemTime,
) -> usize {
    let mut end = history.len();
    let mut kept_bytes = 0u64;
    while end > 0 {
        let start = history[..end]
            .iter()
            .rposition(|s| s.starts_with_snapshot)
            .unwrap_or(0);
        let epoch = &history[start..end];
        let bytes: u64 = epoch.iter().map(|s| s.bytes).sum();
        let too_old = match (retention.max_age, epoch.last().and_then(|s| s.modified)) {
            (Some(max_age), Some(modified)) => {
                now.duration_since(modified).is_ok_and(|age| age > max_age)
            }
            _ => false,
        };
        if too_old || kept_bytes.saturating_add(bytes) > retention.max_bytes {
            return end;
        }
        kept_bytes += bytes;
        end = start;
    }
    0
}
