//! The transfers' file IO (receive store and sender reads), off the node's loop: one worker per
//! transfer runs its operations in order on the runtime's blocking pool and reports each result
//! as a core input.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tracing::debug;

use crate::core::TransferId;
use crate::core::names;
use crate::core::node::Input;
use crate::core::transfers::{StoreOp, StoreResult};
use crate::shell::runtime;
use crate::shell::store::{PartFile, PartWriter, Store, StoreError, WholeFileHash};

pub struct TransferIo {
    store: Arc<Store>,
    umask: u32,
    inputs: async_channel::Sender<Input>,
    workers: HashMap<TransferId, async_channel::Sender<StoreOp>>,
    /// Source files waiting to be hashed, in the order they were queued.
    hashes: async_channel::Sender<(PathBuf, Vec<TransferId>)>,
}

/// Source files hashed at once (each on the blocking pool). A `send DIR` of 100,000 files
/// queues 100,000 hashes: they wait in one queue, in send order, instead of each holding a
/// task and a pool thread.
const HASH_WORKERS: usize = 2;

impl TransferIo {
    pub fn new(store: Store, inputs: async_channel::Sender<Input>) -> Self {
        let (hashes, queued) = async_channel::unbounded::<(PathBuf, Vec<TransferId>)>();
        for _ in 0..HASH_WORKERS {
            runtime::spawn(hash_sources(queued.clone(), inputs.clone())).detach();
        }
        Self {
            store: Arc::new(store),
            umask: current_umask(),
            inputs,
            workers: HashMap::new(),
            hashes,
        }
    }

    /// Queues the whole-file hash of `path`, the source of the sends `ids`; the result comes
    /// back as `Input::SourceHashed`.
    pub fn hash_source(&self, path: PathBuf, ids: Vec<TransferId>) {
        // Unbounded: the core asks once per queued file, and the queue is what it costs.
        let _ = self.hashes.try_send((path, ids));
    }

    pub fn act(&mut self, id: TransferId, op: StoreOp) {
        let closing = op == StoreOp::Close;
        if closing && !self.workers.contains_key(&id) {
            return;
        }
        let tx = self.workers.entry(id).or_insert_with(|| {
            let (tx, rx) = async_channel::unbounded();
            let files = Files {
                id,
                store: self.store.clone(),
                umask: self.umask,
                part: None,
                writer: None,
                hashed: WholeFileHash::new(),
                source: None,
            };
            runtime::spawn(work(files, rx, self.inputs.clone())).detach();
            tx
        });
        let _ = tx.try_send(op);
        if closing {
            self.workers.remove(&id);
        }
    }
}

/// One hashing worker: takes queued source files one at a time.
async fn hash_sources(
    queued: async_channel::Receiver<(PathBuf, Vec<TransferId>)>,
    inputs: async_channel::Sender<Input>,
) {
    while let Ok((path, ids)) = queued.recv().await {
        let result = runtime::unblock(move || {
            crate::shell::store::hash_file(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
        .await;
        if inputs
            .send(Input::SourceHashed { ids, result })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Operations one trip to the blocking pool carries at most: what has queued up meanwhile
/// (up to 1 MiB of 128 KiB chunks) goes together, so that a transfer costs one thread
/// handover per batch rather than one per chunk.
const MAX_BATCH: usize = 8;

async fn work(
    mut files: Files,
    ops: async_channel::Receiver<StoreOp>,
    inputs: async_channel::Sender<Input>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(op) = ops.recv().await {
        batch.push(op);
        while batch.len() < MAX_BATCH
            && batch.last() != Some(&StoreOp::Close)
            && let Ok(op) = ops.try_recv()
        {
            batch.push(op);
        }
        let closing = batch.last() == Some(&StoreOp::Close);
        let id = files.id;
        let ops_now: Vec<StoreOp> = std::mem::take(&mut batch)
            .into_iter()
            .filter(|op| *op != StoreOp::Close)
            .collect();
        if ops_now.is_empty() {
            // A lone `Close` needs no trip to the blocking pool (one per transfer it was).
            if closing {
                return;
            }
            continue;
        }
        let (back, results) = runtime::unblock(move || {
            let results: Vec<StoreResult> = ops_now
                .into_iter()
                .filter_map(|op| files.perform(op))
                .collect();
            (files, results)
        })
        .await;
        files = back;
        for result in results {
            if inputs.send(Input::Store { id, result }).await.is_err() {
                return;
            }
        }
        if closing {
            return;
        }
    }
}

/// One transfer's open files.
struct Files {
    id: TransferId,
    store: Arc<Store>,
    umask: u32,
    part: Option<PartFile>,
    writer: Option<PartWriter>,
    /// The whole-file hash over what has been written so far.
    hashed: WholeFileHash,
    source: Option<(PathBuf, File)>,
}

impl Files {
    fn perform(&mut self, op: StoreOp) -> Option<StoreResult> {
        Some(match op {
            StoreOp::Prepare { name, size } => match self.prepare(&name, size) {
                Ok(part_len) => StoreResult::Prepared { part_len },
                Err(reason) => StoreResult::PrepareFailed { reason },
            },
            StoreOp::Write {
                index,
                offset,
                data,
                sha256,
            } => match &self.writer {
                Some(writer) => match writer.write_chunk(offset, &data, &sha256) {
                    Ok(ok) => {
                        if ok {
                            self.hashed.wrote(offset, &data);
                        }
                        StoreResult::Verified { index, ok }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::StorageFull => {
                        let free = self.store.free_bytes().unwrap_or(0);
                        StoreResult::NoSpace {
                            reason: format!(
                                "the receive directory's disk is full ({free} bytes free)"
                            ),
                        }
                    }
                    Err(err) => StoreResult::WriteFailed {
                        reason: err.to_string(),
                    },
                },
                None => StoreResult::WriteFailed {
                    reason: "the .part file is not open".into(),
                },
            },
            StoreOp::Sync => match self.writer.as_ref().map(PartWriter::sync) {
                Some(Ok(())) => StoreResult::Synced,
                Some(Err(err)) => StoreResult::WriteFailed {
                    reason: err.to_string(),
                },
                None => StoreResult::WriteFailed {
                    reason: "the .part file is not open".into(),
                },
            },
            StoreOp::Finalize {
                sha256,
                mode,
                mtime,
                adopt_identical,
            } => {
                self.writer = None;
                let Some(part) = &self.part else {
                    return Some(StoreResult::FinalizeFailed {
                        reason: "the .part file is not open".into(),
                    });
                };
                let hashed = std::mem::take(&mut self.hashed);
                let finalized = if adopt_identical {
                    part.finalize_adopting(
                        &sha256,
                        names::mode_for(mode, self.umask),
                        mtime,
                        hashed,
                    )
                } else {
                    part.finalize_hashed(&sha256, names::mode_for(mode, self.umask), mtime, hashed)
                };
                match finalized {
                    Ok(path) => StoreResult::Finalized { path },
                    Err(StoreError::HashMismatch) => StoreResult::FinalizeFailed {
                        reason: "the whole file's SHA-256 differs from the sender's".into(),
                    },
                    Err(err) => StoreResult::FinalizeFailed {
                        reason: err.to_string(),
                    },
                }
            }
            StoreOp::DeletePart => {
                self.writer = None;
                if let Some(part) = &self.part
                    && let Err(err) = part.delete()
                {
                    debug!(id = %self.id, "deleting the .part: {err}");
                }
                return None;
            }
            StoreOp::Discard { name } => {
                self.writer = None;
                let deleted = self
                    .store
                    .prepare(&name, &self.id)
                    .map_err(|e| e.to_string())
                    .and_then(|part| part.delete().map_err(|e| e.to_string()));
                if let Err(err) = deleted {
                    debug!(id = %self.id, "deleting the .part of a cancelled transfer: {err}");
                }
                return None;
            }
            StoreOp::Read {
                path,
                index,
                offset,
                len,
            } => match self.read(&path, offset, len) {
                Ok(data) => {
                    let sha256 = Sha256::digest(&data).into();
                    StoreResult::ChunkRead {
                        index,
                        data,
                        sha256,
                    }
                }
                Err(err) => StoreResult::ReadFailed {
                    reason: format!("cannot read {}: {err}", path.display()),
                },
            },
            StoreOp::Close => return None,
        })
    }

    fn prepare(&mut self, name: &str, size: u64) -> Result<u64, String> {
        let part = self
            .store
            .prepare(name, &self.id)
            .map_err(|e| e.to_string())?;
        let held = part.len().map_err(|e| e.to_string())?;
        let free = self.store.free_bytes().map_err(|e| e.to_string())?;
        let needed = size.saturating_sub(held);
        if needed > free {
            return Err(format!(
                "{}: {needed} bytes needed, {free} free on the receiver",
                crate::core::transfer::NO_SPACE
            ));
        }
        let writer = part.open().map_err(|e| e.to_string())?;
        self.hashed = WholeFileHash::new();
        self.part = Some(part);
        self.writer = Some(writer);
        Ok(held)
    }

    fn read(&mut self, path: &PathBuf, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        if self.source.as_ref().is_none_or(|(p, _)| p != path) {
            self.source = Some((path.clone(), File::open(path)?));
        }
        let (_, file) = self.source.as_ref().expect("opened above");
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut data, offset)?;
        Ok(data)
    }
}

/// The process umask, read without changing it (`/proc/self/status`); 0o022 if unknown.
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender cancelled a transfer whose machine is not running here: `Discard` deletes its
    /// `.part` by name without opening it, and a missing one is no error.
    #[test]
    fn discard_deletes_the_part_of_a_named_transfer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("receive")).unwrap();
        let id = TransferId([4; 16]);
        let part = store.prepare("inbox/f7", &id).unwrap();
        drop(part.open().unwrap());
        assert!(part.part_path.exists());
        let mut files = Files {
            id,
            store: Arc::new(store),
            umask: 0o022,
            part: None,
            writer: None,
            hashed: WholeFileHash::new(),
            source: None,
        };
        let discard = StoreOp::Discard {
            name: "inbox/f7".into(),
        };
        assert_eq!(files.perform(discard.clone()), None);
        assert!(!part.part_path.exists());
        assert_eq!(
            files.perform(discard),
            None,
            "already gone: nothing to report"
        );
    }
}
