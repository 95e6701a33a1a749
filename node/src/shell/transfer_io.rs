//! The transfers' file IO (receive store and sender reads), off the node's loop, on threads of
//! its own: each transfer's operations go to one store thread (chosen by its id), which runs
//! them in order and reports each result as a core input. A store thread takes every operation
//! waiting for it in one wake, whichever transfers they belong to, and hands their results back
//! together: with many small files at once, a thread handover per operation was the cost.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::core::TransferId;
use crate::core::names;
use crate::core::node::Input;
use crate::core::transfers::{StoreOp, StoreResult};
use crate::shell::store::{PartFile, PartWriter, Store, StoreError, WholeFileHash};

pub struct TransferIo {
    /// One queue per store thread; a transfer's operations always take the same one.
    threads: Vec<async_channel::Sender<(TransferId, StoreOp)>>,
    /// Source files waiting to be hashed, in the order they were queued.
    hashes: async_channel::Sender<(PathBuf, Vec<TransferId>)>,
}

/// Threads that run the transfers' store operations. They mostly wait on the disk (an fsync
/// per batch of chunks, one per small file), so a slow fsync holds up only the transfers that
/// share its thread; fewer threads take more operations per wake. On this project's 2-core
/// bench machine 2 and 8 threads cost the same CPU per small file within noise; 4 keeps four
/// fsyncs in flight on a real disk.
const STORE_THREADS: usize = 4;

/// Source files hashed at once, each on a thread of its own. A `send DIR` of 100,000 files
/// queues 100,000 hashes: they wait in one queue, in send order, instead of each holding a
/// thread.
const HASH_THREADS: usize = 2;

/// Operations one wake of a store thread carries out at most before it reports their
/// results (up to 2 MiB of 128 KiB chunks): results go back in batches, but none waits for
/// long behind others.
const MAX_BATCH: usize = 16;

impl TransferIo {
    pub fn new(store: Store, inputs: async_channel::Sender<Input>) -> Self {
        let store = Arc::new(store);
        let umask = current_umask();
        let (hashes, queued) = async_channel::unbounded::<(PathBuf, Vec<TransferId>)>();
        for n in 0..HASH_THREADS {
            let (queued, inputs) = (queued.clone(), inputs.clone());
            spawn_thread(format!("fsnode-hash-{n}"), move || {
                hash_sources(&queued, &inputs)
            });
        }
        let threads = (0..STORE_THREADS)
            .map(|n| {
                // Unbounded: the core bounds what it has in flight (windows, running caps).
                let (tx, rx) = async_channel::unbounded();
                let (store, inputs) = (store.clone(), inputs.clone());
                spawn_thread(format!("fsnode-store-{n}"), move || {
                    run_store_ops(&rx, &store, umask, &inputs)
                });
                tx
            })
            .collect();
        Self { threads, hashes }
    }

    /// Queues the whole-file hash of `path`, the source of the sends `ids`; the result comes
    /// back as `Input::SourceHashed`.
    pub fn hash_source(&self, path: PathBuf, ids: Vec<TransferId>) {
        // Unbounded: the core asks once per queued file, and the queue is what it costs.
        let _ = self.hashes.try_send((path, ids));
    }

    /// Queues `op` for transfer `id`, after every earlier operation of that transfer.
    pub fn act(&mut self, id: TransferId, op: StoreOp) {
        let thread = &self.threads[store_thread_of(&id, self.threads.len())];
        // Unbounded; the threads live as long as this adapter.
        let _ = thread.try_send((id, op));
    }
}

/// Which store thread carries transfer `id` (ids are random, so their first bytes spread
/// transfers evenly).
fn store_thread_of(id: &TransferId, threads: usize) -> usize {
    let prefix = u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes of 16"));
    (prefix % threads as u64) as usize
}

fn spawn_thread(name: String, work: impl FnOnce() + Send + 'static) {
    if let Err(err) = std::thread::Builder::new().name(name.clone()).spawn(work) {
        // Transfers through this thread stall; the node says why instead of failing later.
        warn!("cannot start the {name} thread: {err}");
    }
}

/// One hashing thread: takes queued source files one at a time until the adapter is gone.
fn hash_sources(
    queued: &async_channel::Receiver<(PathBuf, Vec<TransferId>)>,
    inputs: &async_channel::Sender<Input>,
) {
    while let Ok((path, ids)) = queued.recv_blocking() {
        let result = crate::shell::store::hash_file(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()));
        if inputs
            .send_blocking(Input::SourceHashed { ids, result })
            .is_err()
        {
            return;
        }
    }
}

/// One store thread: the open files of each of its transfers, from the first operation to
/// `Close`; every wake takes what is waiting (at most [`MAX_BATCH`]) and reports it together.
fn run_store_ops(
    ops: &async_channel::Receiver<(TransferId, StoreOp)>,
    store: &Arc<Store>,
    umask: u32,
    inputs: &async_channel::Sender<Input>,
) {
    let mut open: HashMap<TransferId, Files> = HashMap::new();
    let mut results: Vec<Input> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = ops.recv_blocking() {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some((id, op)) = next {
            if op == StoreOp::Close {
                open.remove(&id);
            } else {
                let files = open
                    .entry(id)
                    .or_insert_with(|| Files::new(id, store.clone(), umask));
                if let Some(result) = files.perform(op) {
                    results.push(Input::Store { id, result });
                }
            }
            taken += 1;
            next = if taken < MAX_BATCH {
                ops.try_recv().ok()
            } else {
                None
            };
        }
        for result in results.drain(..) {
            if inputs.send_blocking(result).is_err() {
                return;
            }
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
    fn new(id: TransferId, store: Arc<Store>, umask: u32) -> Self {
        Self {
            id,
            store,
            umask,
            part: None,
            writer: None,
            hashed: WholeFileHash::new(),
            source: None,
        }
    }

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
                sync,
            } => match &self.writer {
                Some(writer) => match writer.write_chunk(offset, &data, &sha256) {
                    Ok(false) => StoreResult::Verified {
                        index,
                        ok: false,
                        synced: false,
                    },
                    Ok(true) => {
                        self.hashed.wrote(offset, &data);
                        match if sync { writer.sync() } else { Ok(()) } {
                            Ok(()) => StoreResult::Verified {
                                index,
                                ok: true,
                                synced: sync,
                            },
                            Err(err) => StoreResult::WriteFailed {
                                reason: self.at_part(err),
                            },
                        }
                    }
                    Err(err) => self.write_failed(err),
                },
                None => StoreResult::WriteFailed {
                    reason: "the .part file is not open".into(),
                },
            },
            StoreOp::Sync => match self.writer.as_ref().map(PartWriter::sync) {
                Some(Ok(())) => StoreResult::Synced,
                Some(Err(err)) => StoreResult::WriteFailed {
                    reason: self.at_part(err),
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
            StoreOp::Append { offset, data, sync } => match &self.writer {
                Some(writer) => match writer
                    .write_at(offset, &data)
                    .and_then(|()| if sync { writer.sync() } else { Ok(()) })
                {
                    Ok(()) => {
                        self.hashed.wrote(offset, &data);
                        StoreResult::Appended {
                            end: offset + data.len() as u64,
                            synced: sync,
                        }
                    }
                    Err(err) => self.write_failed(err),
                },
                None => StoreResult::WriteFailed {
                    reason: "the .part file is not open".into(),
                },
            },
            StoreOp::FinalizeStream {
                sha256,
                mode,
                mtime,
            } => {
                self.writer = None;
                let Some(part) = &self.part else {
                    return Some(StoreResult::FinalizeFailed {
                        reason: "the .part file is not open".into(),
                    });
                };
                let hashed = std::mem::take(&mut self.hashed);
                match part.finalize_checking(
                    sha256.as_ref(),
                    names::mode_for(mode, self.umask),
                    mtime,
                    hashed,
                ) {
                    Ok(path) => StoreResult::Finalized { path },
                    Err(StoreError::HashMismatch) => StoreResult::FinalizeFailed {
                        reason: "the file's SHA-256 differs from the one the sender announced"
                            .into(),
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

    /// An error of the open `.part` file, naming it.
    /// A failed write to the `.part`: a full disk pauses the transfer (with the free space
    /// said), anything else fails it, naming the file.
    fn write_failed(&self, err: std::io::Error) -> StoreResult {
        if err.kind() == std::io::ErrorKind::StorageFull {
            let free = self.store.free_bytes().unwrap_or(0);
            return StoreResult::NoSpace {
                reason: format!("the receive directory's disk is full ({free} bytes free)"),
            };
        }
        StoreResult::WriteFailed {
            reason: self.at_part(err),
        }
    }

    fn at_part(&self, err: impl std::fmt::Display) -> String {
        match &self.part {
            Some(part) => format!("{}: {err}", part.part_path.display()),
            None => err.to_string(),
        }
    }

    fn prepare(&mut self, name: &str, size: u64) -> Result<u64, String> {
        let part = self
            .store
            .prepare(name, &self.id)
            .map_err(|e| e.to_string())?;
        let at = |e: std::io::Error| format!("{}: {e}", part.part_path.display());
        let held = part.len().map_err(at)?;
        let root = self.store.root();
        let free = (self.store.free_bytes()).map_err(|e| format!("{}: {e}", root.display()))?;
        // What the `.part` occupies, not its length: it has its full length from the start.
        let occupied = part.allocated().map_err(at)?;
        let needed = size.saturating_sub(occupied);
        if needed > free {
            return Err(format!(
                "{}: {needed} bytes needed, {free} free on the receiver",
                crate::core::transfer::NO_SPACE
            ));
        }
        let writer = part.open().map_err(at)?;
        writer.reserve(size).map_err(at)?;
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
        let mut files = Files::new(id, Arc::new(store), 0o022);
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

    /// A store error names the file it happened to, with its whole path: a `.part` that
    /// cannot be opened (here a directory sits in its place) is reported as
    /// `/…/receive/inbox/f7.<id>.part: Is a directory (os error 21)`.
    #[test]
    fn a_store_error_names_the_whole_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("receive")).unwrap();
        let id = TransferId([4; 16]);
        let part = store.prepare("inbox/f7", &id).unwrap();
        std::fs::create_dir(&part.part_path).unwrap();
        let mut files = Files::new(id, Arc::new(store), 0o022);
        let prepare = StoreOp::Prepare {
            name: "inbox/f7".into(),
            size: 1,
        };
        let Some(StoreResult::PrepareFailed { reason }) = files.perform(prepare) else {
            panic!("the .part cannot be opened");
        };
        let named = format!("{}: ", part.part_path.display());
        assert!(reason.starts_with(&named), "{reason}");
        assert!(part.part_path.is_absolute());
    }

    /// Two transfers through the store threads: each one's operations run in order (prepare,
    /// write, sync, finalize), their results come back as inputs in that order, a chunk whose
    /// hash is wrong is reported and not written (nor synced), a write with `sync` says it was
    /// synced, and `Close` drops the open files.
    #[test]
    fn store_threads_run_each_transfers_operations_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("receive")).unwrap();
        let (tx, inputs) = async_channel::bounded(64);
        let mut io = TransferIo::new(store, tx);
        let ids = [TransferId([1; 16]), TransferId([2; 16])];
        let data = b"small file".to_vec();
        let sha256: [u8; 32] = Sha256::digest(&data).into();
        for (n, id) in ids.iter().enumerate() {
            io.act(
                *id,
                StoreOp::Prepare {
                    name: format!("f{n}"),
                    size: 10,
                },
            );
            io.act(
                *id,
                StoreOp::Write {
                    index: 0,
                    offset: 0,
                    data: data.clone(),
                    sha256: [0; 32],
                    sync: true,
                },
            );
            io.act(
                *id,
                StoreOp::Write {
                    index: 0,
                    offset: 0,
                    data: data.clone(),
                    sha256,
                    sync: n == 1,
                },
            );
            io.act(*id, StoreOp::Sync);
            io.act(
                *id,
                StoreOp::Finalize {
                    sha256,
                    mode: None,
                    mtime: None,
                    adopt_identical: false,
                },
            );
            io.act(*id, StoreOp::Close);
        }
        let mut seen: HashMap<TransferId, Vec<StoreResult>> = HashMap::new();
        for _ in 0..ids.len() * 5 {
            let Ok(Input::Store { id, result }) = inputs.recv_blocking() else {
                panic!("a store result");
            };
            seen.entry(id).or_default().push(result);
        }
        for (n, id) in ids.iter().enumerate() {
            let path = dir.path().join("receive").join(format!("f{n}"));
            assert_eq!(
                seen[id],
                vec![
                    StoreResult::Prepared { part_len: 0 },
                    StoreResult::Verified {
                        index: 0,
                        ok: false,
                        synced: false,
                    },
                    StoreResult::Verified {
                        index: 0,
                        ok: true,
                        synced: n == 1,
                    },
                    StoreResult::Synced,
                    StoreResult::Finalized { path: path.clone() },
                ]
            );
            assert_eq!(std::fs::read(&path).unwrap(), data);
        }
        assert!(inputs.try_recv().is_err(), "Close reports nothing");
    }
}
