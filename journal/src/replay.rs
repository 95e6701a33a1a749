//! [`Replay`]: the streaming iterator over decoded records.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::error::JournalError;
use crate::scan::{FrameScan, ScanRules, Source};
use crate::{Record, Seq, TornTail};

/// Size of the CBOR decoder's scratch buffer (what `ciborium::from_reader` puts on the stack, and
/// zeroes, for every call).
pub(crate) const DECODE_SCRATCH: usize = 4096;

/// Iterator over the records of a journal, read from disk one frame at a time.
///
/// Yields `Ok(record)` for every intact record in sequence order. Damage ends the iteration with
/// one `Err` ([`JournalError::Corrupt`], [`JournalError::Io`], ...) after all the records before
/// it; a torn tail (only possible when reading with a [`Reader`](crate::Reader)) ends it without
/// an error, and [`Replay::torn_tail`] tells about it. A record whose frame is intact but whose
/// CBOR does not decode into `R` yields [`JournalError::Decode`] and the iteration goes on.
///
/// Memory use is one read buffer and the largest record, whatever the journal's size.
pub struct Replay<R> {
    scan: FrameScan,
    from: Seq,
    done: bool,
    /// The CBOR decoder's scratch space, reused for every record.
    scratch: Box<[u8]>,
    _record: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Replay<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("from", &self.from)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<R> Replay<R> {
    pub(crate) fn new(sources: Vec<Source>, rules: ScanRules, from: Seq) -> Self {
        Replay {
            scan: FrameScan::new(sources, rules),
            from,
            done: false,
            scratch: vec![0; DECODE_SCRATCH].into_boxed_slice(),
            _record: PhantomData,
        }
    }

    /// The torn tail at the end of the journal, once the iteration has reached it.
    ///
    /// Only a [`Reader`](crate::Reader) finds one: [`Journal::open`](crate::Journal::open) has
    /// already truncated it.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.scan.torn_tail()
    }
}

impl<R: DeserializeOwned> Iterator for Replay<R> {
    type Item = Result<Record<R>, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            match self.scan.next() {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Ok(Some(frame)) => {
                    if frame.seq < self.from {
                        continue;
                    }
                    let decoded = ciborium::de::from_reader_with_buffer::<R, _>(
                        frame.payload,
                        &mut self.scratch,
                    );
                    let record = match decoded {
                        Ok(payload) => Ok(Record {
                            seq: frame.seq,
                            kind: frame.kind,
                            payload,
                        }),
                        Err(e) => Err(JournalError::Decode {
                            segment: frame.segment.to_path_buf(),
                            offset: frame.offset,
                            seq: frame.seq,
                            reason: e.to_string(),
                        }),
                    };
                    return Some(record);
                }
            }
        }
    }
}

impl<R: DeserializeOwned> std::iter::FusedIterator for Replay<R> {}
