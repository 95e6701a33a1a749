//! The node loop's commit pipeline: batches of outputs whose events are appended to the
//! journal and whose effects wait for those events to be durable.
//!
//! Event first, without a pause: the loop appends a batch's events and goes on handling
//! inputs (their events join the journal's next group commit) instead of waiting for the
//! fsync; a batch's replies and effects come out of this queue only once its own events are
//! durable, and batches come out in the order they went in. So nothing a peer or a client is
//! told depends on a record a crash could still take away.

use std::collections::VecDeque;

use fsnode_journal::Pending;

/// One batch: the ticket of its last event (records become durable in order, so it covers
/// every earlier one) and what runs once it is durable.
pub struct Batch<T> {
    pub pending: Option<Pending>,
    pub work: T,
}

/// Batches waiting for their fsync, oldest first.
pub struct CommitQueue<T> {
    batches: VecDeque<Batch<T>>,
}

impl<T> Default for CommitQueue<T> {
    fn default() -> Self {
        Self {
            batches: VecDeque::new(),
        }
    }
}

impl<T> CommitQueue<T> {
    pub fn push(&mut self, batch: Batch<T>) {
        self.batches.push_back(batch);
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The oldest batch's ticket, to wait on; `None` when that batch has no events (it is
    /// ready as soon as everything before it ran) or there is no batch.
    pub fn oldest_pending(&mut self) -> Option<&mut Pending> {
        self.batches.front_mut()?.pending.as_mut()
    }

    /// The oldest batch if its events are durable (or it has none). A batch whose commit
    /// failed never comes out: the journal is poisoned and the caller stops on the error
    /// its ticket reports.
    pub fn pop_durable(&mut self) -> Option<T> {
        let ready = match &self.batches.front()?.pending {
            None => true,
            Some(pending) => pending.is_durable(),
        };
        if !ready {
            return None;
        }
        self.batches.pop_front().map(|b| b.work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fsnode_journal::{Journal, Options};

    fn open(dir: &std::path::Path) -> Journal<String> {
        Journal::<String>::open(dir, Options::default()).unwrap().0
    }

    /// Batches come out in order, each only once its own events are durable; a batch without
    /// events waits for the ones before it.
    #[test]
    fn batches_come_out_in_order_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        let mut queue = CommitQueue::default();
        assert_eq!(queue.pop_durable(), None::<&str>);
        let first = journal.append(&"a".to_string()).unwrap();
        queue.push(Batch {
            pending: Some(first),
            work: "reply to a",
        });
        queue.push(Batch {
            pending: None,
            work: "effect without events",
        });
        let third = journal.append(&"b".to_string()).unwrap();
        queue.push(Batch {
            pending: Some(third),
            work: "reply to b",
        });
        let mut out = Vec::new();
        while !queue.is_empty() {
            if let Some(pending) = queue.oldest_pending() {
                futures_lite::future::block_on(pending).unwrap();
            }
            while let Some(work) = queue.pop_durable() {
                out.push(work);
            }
        }
        assert_eq!(out, ["reply to a", "effect without events", "reply to b"]);
        journal.close().unwrap();
    }

    /// A crash between append and fsync: the node told nobody about a batch before it came
    /// out of the queue, and whatever part of the unsynced tail the crash takes away, the
    /// reopened journal has every record of every batch that did come out.
    #[test]
    fn nothing_that_came_out_is_lost_when_the_process_dies_before_the_next_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        let mut queue = CommitQueue::default();
        let mut announced = Vec::new();
        for n in 0..50usize {
            let pending = journal.append(&format!("event {n}")).unwrap();
            queue.push(Batch {
                pending: Some(pending),
                work: n,
            });
            if n % 7 == 0
                && let Some(pending) = queue.oldest_pending()
            {
                futures_lite::future::block_on(pending).unwrap();
            }
            while let Some(n) = queue.pop_durable() {
                announced.push(n);
            }
        }
        // What is durable now covers at least every announced record.
        let durable_end = fsnode_journal::SEGMENT_HEADER_LEN + journal.stats().bytes;
        let segment = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        let bytes = std::fs::read(&segment).unwrap();
        assert!(!announced.is_empty());
        // The crash keeps the durable part and any prefix of the rest.
        for cut in [0, 1, 17, 40, 100, 1_000] {
            let len = usize::try_from(durable_end).unwrap() + cut;
            let copy = tempfile::tempdir().unwrap();
            std::fs::write(
                copy.path().join(segment.file_name().unwrap()),
                &bytes[..len.min(bytes.len())],
            )
            .unwrap();
            let reopened = open(copy.path());
            let recovered: Vec<String> = reopened
                .replay()
                .unwrap()
                .map(|r| r.unwrap().payload)
                .collect();
            for n in &announced {
                assert_eq!(recovered.get(*n), Some(&format!("event {n}")), "cut {cut}");
            }
            reopened.close().unwrap();
        }
        journal.close().unwrap();
    }
}
