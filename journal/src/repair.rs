//! Repairing a damaged journal: what a truncation at the first damaged frame would keep and
//! lose ([`Reader::damage`]), and the truncation itself ([`repair`]), which moves what it cuts
//! into a directory of the caller's choosing instead of deleting it.
//!
//! A torn tail is not damage (the writer drops it when it opens); damage is anything else the
//! scan refuses: a bad segment header, a frame whose checksum, kind or sequence is wrong, a
//! payload that does not decode. Everything before it is intact and kept.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::JournalError;
use crate::frame::{self, FRAME_HEADER_LEN, FrameHeader};
use crate::segment::{self, HEADER_LEN};
use crate::{Options, Reader};

/// Where a journal is damaged, and what a truncation there keeps and loses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The damaged segment.
    pub segment: PathBuf,
    /// Byte offset of the damaged header or frame in it: a repair truncates the segment here.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
    /// Intact records before the damage (a repair keeps them).
    pub records_kept: u64,
    /// Records a repair cuts: the damaged one, and those found intact after it (in the rest of
    /// the segment and in every later segment).
    pub records_lost: u64,
    /// The segments after the damaged one (a repair moves them out whole).
    pub later_segments: Vec<PathBuf>,
}

/// What [`repair`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repaired {
    pub damage: Damage,
    /// The files holding what was cut (the tail of the damaged segment, the later segments).
    pub kept_in: Vec<PathBuf>,
}

impl<R: DeserializeOwned> Reader<R> {
    /// Finds the first damage, if any, and counts what a truncation there would keep and lose.
    /// Reads only. A journal written by a newer format version is not damage: that error is
    /// returned.
    pub fn damage(&self) -> Result<Option<Damage>, JournalError> {
        let mut kept = 0u64;
        let (segment, offset, reason) = match self.replay_from(0) {
            Err(err) => located(err)?,
            Ok(records) => {
                let mut found = None;
                for record in records {
                    match record {
                        Ok(_) => kept += 1,
                        Err(err) => {
                            found = Some(located(err)?);
                            break;
                        }
                    }
                }
                match found {
                    Some(found) => found,
                    None => return Ok(None),
                }
            }
        };
        let listing = segment::list(self.dir())?;
        let later_segments: Vec<PathBuf> = listing
            .segments
            .iter()
            .map(|s| s.path.clone())
            .skip_while(|p| *p != segment)
            .skip(1)
            .collect();
        let max = self.opts.max_record_bytes;
        let mut lost = 1 + intact_frames(&segment, offset + 1, max)?;
        for later in &later_segments {
            lost += intact_frames(later, HEADER_LEN, max)?;
        }
        Ok(Some(Damage {
            segment,
            offset,
            reason,
            records_kept: kept,
            records_lost: lost,
            later_segments,
        }))
    }
}

/// The place of a damage error; any other error is passed on.
fn located(err: JournalError) -> Result<(PathBuf, u64, String), JournalError> {
    match err {
        JournalError::Corrupt {
            segment,
            offset,
            reason,
        } => Ok((segment, offset, reason)),
        JournalError::Decode {
            segment,
            offset,
            seq,
            reason,
        } => Ok((
            segment,
            offset,
            format!("record {seq} does not decode: {reason}"),
        )),
        other => Err(other),
    }
}

/// Frames of `path` from byte `from` on whose header and checksum are intact, found by trying
/// every offset (the frame at the damage may not say where the next one starts).
fn intact_frames(path: &Path, from: u64, max_record_bytes: u32) -> Result<u64, JournalError> {
    let bytes = fs::read(path).map_err(|e| JournalError::io(path, e))?;
    let mut pos = usize::try_from(from).unwrap_or(usize::MAX);
    let mut found = 0;
    while pos + FRAME_HEADER_LEN <= bytes.len() {
        let mut raw = [0u8; FRAME_HEADER_LEN];
        raw.copy_from_slice(&bytes[pos..pos + FRAME_HEADER_LEN]);
        let body = pos + FRAME_HEADER_LEN;
        let frame = FrameHeader::decode(&raw).filter(|h| h.len > 0 && h.len <= max_record_bytes);
        if let Some(header) = frame {
            // len <= max_record_bytes, a u32: fits in usize.
            let end = body + header.len as usize;
            if end <= bytes.len()
                && frame::checksum(header.seq, header.kind, &bytes[body..end]) == header.crc
            {
                found += 1;
                pos = end;
                continue;
            }
        }
        pos += 1;
    }
    Ok(found)
}

/// Truncates the journal in `dir` at its first damage, after moving what is cut into `keep`
/// (created if missing; on the same file system, so later segments are renamed, not copied):
/// the damaged segment's bytes from the damage on, as `NAME.from-OFFSET`, and every later
/// segment whole. Takes the journal's lock, so no writer runs meanwhile. `Ok(None)`: nothing
/// is damaged (a torn tail is left to the writer, which drops it when it opens).
pub fn repair(dir: &Path, opts: &Options, keep: &Path) -> Result<Option<Repaired>, JournalError> {
    let _lock = crate::journal::lock_dir(dir)?;
    let reader = Reader::<serde::de::IgnoredAny>::open(dir, opts.clone())?;
    let Some(damage) = reader.damage()? else {
        return Ok(None);
    };
    fs::create_dir_all(keep).map_err(|e| JournalError::io(keep, e))?;
    let mut kept_in = Vec::new();
    let name = damage
        .segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The damaged segment's tail, copied before it is cut; a damaged segment header leaves
    // nothing worth keeping in place: the whole file moves out.
    if damage.offset < HEADER_LEN {
        let to = keep.join(&name);
        fs::rename(&damage.segment, &to).map_err(|e| JournalError::io(&damage.segment, e))?;
        kept_in.push(to);
    } else {
        let to = keep.join(format!("{name}.from-{}", damage.offset));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&damage.segment)
            .map_err(|e| JournalError::io(&damage.segment, e))?;
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(damage.offset))
            .and_then(|_| file.read_to_end(&mut tail))
            .map_err(|e| JournalError::io(&damage.segment, e))?;
        let mut copy = fs::File::create(&to).map_err(|e| JournalError::io(&to, e))?;
        copy.write_all(&tail)
            .and_then(|()| copy.sync_all())
            .map_err(|e| JournalError::io(&to, e))?;
        kept_in.push(to);
        file.set_len(damage.offset)
            .and_then(|()| file.sync_all())
            .map_err(|e| JournalError::io(&damage.segment, e))?;
    }
    for later in &damage.later_segments {
        let to = keep.join(later.file_name().unwrap_or_default());
        fs::rename(later, &to).map_err(|e| JournalError::io(later, e))?;
        kept_in.push(to);
    }
    segment::sync_dir(keep).map_err(|e| JournalError::io(keep, e))?;
    segment::sync_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    Ok(Some(Repaired { damage, kept_in }))
}
