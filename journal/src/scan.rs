//! Reading frames back: one streaming scanner shared by replay, verification and recovery.
//!
//! [`FrameScan`] walks a list of segments in order, checks every header and frame (CRC, kind,
//! sequence continuity across segments, snapshot placement) and applies the torn-tail rule: in
//! the final segment only, and only when the caller allows it, a damaged frame that nothing but
//! zeros (or the end of the file) follows is a torn tail, not corruption.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::frame::{self, FRAME_HEADER_LEN, FrameHeader};
use crate::segment::{self, HEADER_LEN, SegmentFile};
use crate::{RecordKind, Seq, TornTail};

/// Read buffer for streaming replay.
pub(crate) const REPLAY_BUFFER: usize = 256 * 1024;
/// Read buffer for probing the first frame of a segment.
pub(crate) const PROBE_BUFFER: usize = 16 * 1024;

/// One segment to scan: an open file and how far into it to read.
pub(crate) struct Source {
    pub path: PathBuf,
    /// First sequence number according to the file name.
    pub first_seq: Seq,
    pub file: File,
    /// Bytes of the file to consider; bytes past it are not read.
    pub limit: u64,
}

impl Source {
    /// Opens a segment for reading, up to `limit` bytes or to its current length.
    pub(crate) fn open(seg: &SegmentFile, limit: Option<u64>) -> Result<Self, JournalError> {
        let file = File::open(&seg.path).map_err(|e| JournalError::io(&seg.path, e))?;
        let limit = match limit {
            Some(l) => l,
            None => file
                .metadata()
                .map_err(|e| JournalError::io(&seg.path, e))?
                .len(),
        };
        Ok(Source {
            path: seg.path.clone(),
            first_seq: seg.first_seq,
            file,
            limit,
        })
    }
}

/// How a scan treats the data it reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanRules {
    /// Frames with a longer payload are damaged (never allocated for).
    pub max_record_bytes: u32,
    /// Whether damage at the end of the final segment may be a torn tail.
    pub tail_may_be_torn: bool,
    /// Capacity of the read buffer.
    pub buffer: usize,
}

/// A frame read by [`FrameScan::next`]; the payload borrows the scanner's buffer.
pub(crate) struct Frame<'a> {
    pub segment: &'a Path,
    pub offset: u64,
    pub seq: Seq,
    pub kind: RecordKind,
    pub payload: &'a [u8],
}

struct FrameMeta {
    offset: u64,
    seq: Seq,
    kind: RecordKind,
}

struct Current {
    path: PathBuf,
    reader: BufReader<File>,
    pos: u64,
    limit: u64,
    is_final: bool,
    frames: u64,
    /// The last frame read was a snapshot part: the snapshot continues in the next frame.
    snapshot_open: bool,
}

impl Current {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), JournalError> {
        self.reader
            .read_exact(buf)
            .map_err(|e| read_error(&self.path, self.pos, e))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads a frame header where one may start; `false` when the final segment ends right
    /// there because a live writer trimmed its preallocated zeros meanwhile (see
    /// [`Current::rest_is_zero`]).
    fn read_header(&mut self, buf: &mut [u8]) -> Result<bool, JournalError> {
        match self.reader.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(true)
            }
            Err(e) if self.is_final && e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(read_error(&self.path, self.pos, e)),
        }
    }

    /// Whether every byte from the current position to the limit is zero.
    fn rest_is_zero(&mut self) -> Result<bool, JournalError> {
        let mut chunk = [0u8; 8192];
        while self.pos < self.limit {
            let n =
                usize::try_from(self.limit - self.pos).map_or(chunk.len(), |r| r.min(chunk.len()));
            let buf = &mut chunk[..n];
            match self.reader.read_exact(buf) {
                Ok(()) => self.pos += n as u64,
                // A reader beside a live writer: closing, the writer trims the zeros it
                // preallocated after the data of the last segment, so that segment may end
                // early here. Only zeros were cut.
                Err(e) if self.is_final && e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(true);
                }
                Err(e) => return Err(read_error(&self.path, self.pos, e)),
            }
            if buf.iter().any(|&b| b != 0) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Reads `len` bytes and returns their CRC-32C appended to `crc`, without buffering them.
    fn checksum_through(&mut self, mut crc: u32, mut len: u64) -> Result<u32, JournalError> {
        let mut chunk = [0u8; 8192];
        while len > 0 {
            let n = usize::try_from(len).map_or(chunk.len(), |r| r.min(chunk.len()));
            let buf = &mut chunk[..n];
            self.read_exact(buf)?;
            crc = crc32c::crc32c_append(crc, buf);
            len -= n as u64;
        }
        Ok(crc)
    }
}

fn read_error(path: &Path, pos: u64, e: io::Error) -> JournalError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        JournalError::corrupt(
            path,
            pos,
            "the segment ended before its expected length (was it truncated while being read?)",
        )
    } else {
        JournalError::io(path, e)
    }
}

/// Streams the frames of a sequence of segments, checking everything it reads.
pub(crate) struct FrameScan {
    sources: std::vec::IntoIter<Source>,
    cur: Option<Current>,
    rules: ScanRules,
    /// The sequence number the next frame must carry.
    expected: Option<Seq>,
    payload: Vec<u8>,
    torn: Option<TornTail>,
    finished: bool,
    /// Where the valid data of the most recently scanned segment ends, once known.
    end_of_data: Option<u64>,
    last_segment_frames: u64,
}

impl FrameScan {
    pub(crate) fn new(sources: Vec<Source>, rules: ScanRules) -> Self {
        FrameScan {
            sources: sources.into_iter(),
            cur: None,
            rules,
            expected: None,
            payload: Vec::new(),
            torn: None,
            finished: false,
            end_of_data: None,
            last_segment_frames: 0,
        }
    }

    /// The torn tail found in the final segment, once the scan has reached it.
    pub(crate) fn torn_tail(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// Byte offset where the valid data of the last scanned segment ends (after a finished scan:
    /// of the final segment; the start of a torn tail if there is one).
    pub(crate) fn end_of_data(&self) -> Option<u64> {
        self.end_of_data
    }

    /// Number of valid frames in the last scanned segment.
    pub(crate) fn last_segment_frames(&self) -> u64 {
        self.last_segment_frames
    }

    /// The sequence number the next frame would have carried.
    pub(crate) fn next_seq(&self) -> Option<Seq> {
        self.expected
    }

    /// The next valid frame; `Ok(None)` at the end of the last segment or at a torn tail.
    ///
    /// After an error the scan is over: later calls return `Ok(None)`.
    pub(crate) fn next(&mut self) -> Result<Option<Frame<'_>>, JournalError> {
        match self.advance() {
            Ok(Some(meta)) => {
                let segment = match &self.cur {
                    Some(cur) => cur.path.as_path(),
                    None => Path::new(""),
                };
                Ok(Some(Frame {
                    segment,
                    offset: meta.offset,
                    seq: meta.seq,
                    kind: meta.kind,
                    payload: &self.payload,
                }))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.finished = true;
                self.cur = None;
                Err(e)
            }
        }
    }

    fn advance(&mut self) -> Result<Option<FrameMeta>, JournalError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let Some(cur) = self.cur.as_mut() else {
                match self.sources.next() {
                    Some(src) => {
                        let is_final = self.sources.len() == 0;
                        self.enter(src, is_final)?;
                    }
                    None => self.finished = true,
                }
                continue;
            };

            let offset = cur.pos;
            let remaining = cur.limit - cur.pos;
            if remaining < FRAME_HEADER_LEN as u64 {
                let mut partial = [0u8; FRAME_HEADER_LEN];
                // remaining < 17, so the cast is lossless.
                let partial = &mut partial[..remaining as usize];
                if !cur.read_header(partial)? || partial.iter().all(|&b| b == 0) {
                    self.end_segment(offset)?;
                } else {
                    let end = offset + FRAME_HEADER_LEN as u64;
                    self.damaged(
                        offset,
                        end,
                        "a frame header runs past the end of the segment".into(),
                    )?;
                }
                continue;
            }

            let mut raw = [0u8; FRAME_HEADER_LEN];
            if !cur.read_header(&mut raw)? {
                self.end_segment(offset)?;
                continue;
            }
            let Some(header) = FrameHeader::decode(&raw) else {
                self.end_segment(offset)?;
                continue;
            };
            let body = cur.pos;
            let frame_end = body + u64::from(header.len);
            if header.len == 0 {
                self.damaged(
                    offset,
                    body,
                    "a frame header declares a payload length of 0".into(),
                )?;
                continue;
            }
            if frame_end > cur.limit {
                let reason = format!(
                    "a frame of {} payload bytes runs past the end of the segment ({} bytes)",
                    header.len, cur.limit
                );
                self.damaged(offset, frame_end, reason)?;
                continue;
            }
            let expected = self.expected.unwrap_or(header.seq);
            if header.len > self.rules.max_record_bytes {
                // Never allocate for it, but find out whether it is intact: an intact frame that
                // is merely larger than this reader's limit must not be mistaken for a torn tail.
                let crc = cur.checksum_through(
                    frame::checksum(header.seq, header.kind, &[]),
                    u64::from(header.len),
                )?;
                let intact = crc == header.crc
                    && RecordKind::from_byte(header.kind).is_some()
                    && header.seq == expected;
                if intact {
                    return Err(JournalError::corrupt(
                        &cur.path,
                        offset,
                        format!(
                            "record seq {} is intact but its {} bytes exceed max_record_bytes ({}); \
                             open the journal with max_record_bytes of at least {}",
                            header.seq, header.len, self.rules.max_record_bytes, header.len
                        ),
                    ));
                }
                let reason = format!(
                    "a frame header declares {} payload bytes, more than max_record_bytes ({})",
                    header.len, self.rules.max_record_bytes
                );
                self.damaged(offset, frame_end, reason)?;
                continue;
            }

            // header.len <= max_record_bytes, a u32: fits in usize on every supported target.
            self.payload.resize(header.len as usize, 0);
            cur.read_exact(&mut self.payload)?;
            if frame::checksum(header.seq, header.kind, &self.payload) != header.crc {
                let reason = format!("CRC mismatch in the frame of seq {}", header.seq);
                self.damaged(offset, frame_end, reason)?;
                continue;
            }
            let Some(kind) = RecordKind::from_byte(header.kind) else {
                self.damaged(
                    offset,
                    frame_end,
                    format!("unknown frame kind {}", header.kind),
                )?;
                continue;
            };
            if header.seq != expected {
                let reason = format!(
                    "the frame carries seq {} where seq {} was expected (records are missing or repeated)",
                    header.seq, expected
                );
                self.damaged(offset, frame_end, reason)?;
                continue;
            }
            let placement = match kind {
                RecordKind::Snapshot | RecordKind::SnapshotPart
                    if cur.frames > 0 && !cur.snapshot_open =>
                {
                    Some("is not the first frame of its segment")
                }
                RecordKind::Event if cur.snapshot_open => {
                    Some("follows a snapshot part that was never completed")
                }
                _ => None,
            };
            if let Some(problem) = placement {
                return Err(JournalError::corrupt(
                    &cur.path,
                    offset,
                    format!("{} seq {} {problem}", kind.noun(), header.seq),
                ));
            }
            cur.snapshot_open = kind == RecordKind::SnapshotPart;
            cur.frames += 1;
            self.last_segment_frames = cur.frames;
            self.expected = Some(header.seq.checked_add(1).ok_or_else(|| {
                JournalError::corrupt(&cur.path, offset, "sequence number overflow")
            })?);
            return Ok(Some(FrameMeta {
                offset,
                seq: header.seq,
                kind,
            }));
        }
    }

    /// Starts scanning a segment: checks its length, header and continuity with the previous one.
    fn enter(&mut self, src: Source, is_final: bool) -> Result<(), JournalError> {
        self.last_segment_frames = 0;
        self.end_of_data = None;
        let Source {
            path,
            first_seq,
            file,
            limit,
        } = src;
        if limit < HEADER_LEN {
            // Without a header, the file name alone says where the segment starts; it must
            // continue the previous segment like a header would (`Journal::open` rewrites the
            // header from the name, and refuses a name that does not continue).
            if let Some(expected) = self.expected
                && first_seq != expected
            {
                return Err(JournalError::corrupt(
                    path,
                    0,
                    format!(
                        "the segment's header is missing and its name says seq {first_seq} but \
                         seq {expected} follows the previous segment"
                    ),
                ));
            }
            let reason = format!(
                "the segment is {limit} bytes long, shorter than its {HEADER_LEN}-byte header"
            );
            if is_final && self.rules.tail_may_be_torn {
                self.finish_torn(path, 0, limit, reason);
                return Ok(());
            }
            return Err(JournalError::corrupt(path, 0, reason));
        }
        let mut cur = Current {
            reader: BufReader::with_capacity(self.rules.buffer, file),
            path,
            pos: 0,
            limit,
            is_final,
            frames: 0,
            snapshot_open: false,
        };
        let mut raw = [0u8; HEADER_LEN as usize];
        cur.read_exact(&mut raw)?;
        let declared = segment::decode_header(&cur.path, &raw)?;
        if declared != first_seq {
            return Err(JournalError::corrupt(
                &cur.path,
                12,
                format!(
                    "the header declares first seq {declared} but the file name says {first_seq}"
                ),
            ));
        }
        if let Some(expected) = self.expected
            && declared != expected
        {
            return Err(JournalError::corrupt(
                &cur.path,
                0,
                format!(
                    "the segment starts at seq {declared} but seq {expected} was expected after the \
                     previous segment (a segment file is missing or duplicated)"
                ),
            ));
        }
        self.expected = Some(declared);
        self.cur = Some(cur);
        Ok(())
    }

    /// An all-zero frame header (or a zero partial header) at `offset`: the segment's data ends.
    /// Whatever follows must be zero too (preallocated space); anything else is a torn tail in
    /// the final segment and corruption elsewhere.
    fn end_segment(&mut self, offset: u64) -> Result<(), JournalError> {
        let Some(mut cur) = self.cur.take() else {
            return Ok(());
        };
        if cur.snapshot_open && !cur.is_final {
            // The writer never rolls to a new segment inside a snapshot.
            return Err(JournalError::corrupt(
                cur.path,
                offset,
                "the segment ends inside a snapshot written in parts",
            ));
        }
        if !cur.rest_is_zero()? {
            let reason = "non-zero bytes follow the end-of-data marker (an all-zero frame header)";
            if cur.is_final && self.rules.tail_may_be_torn {
                self.finish_torn(cur.path, offset, cur.limit - offset, reason.into());
                return Ok(());
            }
            return Err(JournalError::corrupt(cur.path, offset, reason));
        }
        self.end_of_data = Some(offset);
        Ok(())
    }

    /// A damaged frame at `offset` that would end at `frame_end`.
    fn damaged(&mut self, offset: u64, frame_end: u64, reason: String) -> Result<(), JournalError> {
        let Some(mut cur) = self.cur.take() else {
            return Ok(());
        };
        if !(cur.is_final && self.rules.tail_may_be_torn) {
            return Err(JournalError::corrupt(cur.path, offset, reason));
        }
        let torn = frame_end >= cur.limit || {
            let skip = frame_end.saturating_sub(cur.pos);
            io::copy(&mut (&mut cur.reader).take(skip), &mut io::sink())
                .map_err(|e| JournalError::io(&cur.path, e))?;
            cur.pos = frame_end;
            cur.rest_is_zero()?
        };
        if torn {
            self.finish_torn(cur.path, offset, cur.limit - offset, reason);
            Ok(())
        } else {
            Err(JournalError::corrupt(
                cur.path,
                offset,
                format!("{reason}; non-zero bytes follow it, so it is not a torn write"),
            ))
        }
    }

    fn finish_torn(&mut self, segment: PathBuf, offset: u64, bytes: u64, reason: String) {
        self.torn = Some(TornTail {
            segment,
            offset,
            bytes,
            reason,
        });
        self.end_of_data = Some(offset);
        self.finished = true;
        self.cur = None;
    }
}

/// What the first frames of a segment say about a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentStart {
    /// The segment starts with a complete snapshot (one frame, or parts and their last frame).
    Snapshot,
    /// The segment starts with snapshot parts whose last frame never became durable (only
    /// possible in the final segment: a crash while the snapshot was being written).
    IncompleteSnapshot,
    /// The segment starts with an event, or is empty.
    Events,
}

/// Reads the first frames of segment `seg`: whether it starts with a complete snapshot. A
/// single-frame snapshot costs one frame's read; a snapshot in parts is read to its last part.
pub(crate) fn segment_start(
    seg: &SegmentFile,
    is_final: bool,
    max_record_bytes: u32,
) -> Result<SegmentStart, JournalError> {
    let rules = ScanRules {
        max_record_bytes,
        tail_may_be_torn: is_final,
        buffer: PROBE_BUFFER,
    };
    let mut scan = FrameScan::new(vec![Source::open(seg, None)?], rules);
    let mut parts = 0u64;
    while let Some(frame) = scan.next()? {
        match frame.kind {
            RecordKind::SnapshotPart => parts += 1,
            RecordKind::Snapshot => return Ok(SegmentStart::Snapshot),
            RecordKind::Event => break,
        }
    }
    Ok(if parts > 0 {
        SegmentStart::IncompleteSnapshot
    } else {
        SegmentStart::Events
    })
}

/// Finds the newest segment that starts with a complete snapshot.
///
/// Probes segments from the newest backwards, reading only their first frames. In the last
/// segment a torn or incomplete snapshot is no snapshot (it never became durable); damage
/// anywhere else is an error.
pub(crate) fn newest_snapshot(
    segments: &[SegmentFile],
    max_record_bytes: u32,
) -> Result<Option<usize>, JournalError> {
    for (i, seg) in segments.iter().enumerate().rev() {
        if segment_start(seg, i + 1 == segments.len(), max_record_bytes)? == SegmentStart::Snapshot
        {
            return Ok(Some(i));
        }
    }
    Ok(None)
}
