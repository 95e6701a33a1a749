//! `send --wait` clients. Each follows the transfers its send queued: after every durable
//! batch it hears the rows of those the batch changed, and its stream ends once all of them
//! have finished.
//!
//! The rows are taken when their events are appended (the state then is the state the event
//! made) and sent only once the batch is durable, so a client never sees progress the node
//! could still lose. Memory is per followed transfer one id, never a row: a send of 100,000
//! files is followed in a few MiB.

use std::collections::{BTreeMap, HashSet};

use crate::control::{Reply, TransferRow};
use crate::core::{State, TransferId, TransferStatus};

/// Rows one `transfers` reply carries at most.
pub const PAGE_ROWS: usize = 1_000;

/// The rows a batch changed, by transfer, the latest of each.
pub type Changed = BTreeMap<TransferId, TransferRow>;

#[derive(Default)]
pub struct Followers {
    list: Vec<Follower>,
}

struct Follower {
    /// The transfers not yet seen finished.
    unfinished: HashSet<TransferId>,
    reply: async_channel::Sender<Reply>,
}

impl Followers {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether some client waits for `id`.
    pub fn follows(&self, id: &TransferId) -> bool {
        self.list.iter().any(|f| f.unfinished.contains(id))
    }

    /// A client now follows `ids` (when its `queued` reply went out, with the batch that queued
    /// the last of them). The ones that already moved are told at once, as the live state has
    /// them: that state may include the few batches still committing behind that one, the one
    /// case where a client hears of a change a moment before it is durable. One that is gone
    /// from the live state finished and settled before the client came; it is not told and
    /// does not hold the stream open.
    pub fn add(&mut self, ids: &[TransferId], state: &State, reply: async_channel::Sender<Reply>) {
        let mut follower = Follower {
            unfinished: ids.iter().copied().collect(),
            reply,
        };
        let mut moved = Changed::new();
        for id in ids {
            match state.transfers.get(id) {
                Some(t) if t.status == TransferStatus::Queued && t.durable_bytes() == 0 => {}
                Some(t) => {
                    moved.insert(*id, TransferRow::of(state, id, t));
                }
                None => {
                    follower.unfinished.remove(id);
                }
            }
        }
        if follower.tell(&moved) {
            self.list.push(follower);
        }
    }

    /// Tells each client the rows of its transfers among `changed`; drops the clients whose
    /// transfers have all finished (closing their streams), went away or do not keep up.
    pub fn tell(&mut self, changed: &Changed) {
        if changed.is_empty() {
            return;
        }
        self.list.retain_mut(|f| f.tell(changed));
    }
}

impl Follower {
    /// False once this client is done with: everything finished, or it is gone.
    fn tell(&mut self, changed: &Changed) -> bool {
        let mut rows = Vec::new();
        for (id, row) in changed {
            if !self.unfinished.contains(id) {
                continue;
            }
            if row.status.is_finished() {
                self.unfinished.remove(id);
            }
            rows.push(row.clone());
        }
        for page in rows.chunks(PAGE_ROWS) {
            let reply = Reply::Transfers {
                transfers: page.to_vec(),
                not_shown: 0,
            };
            if self.reply.try_send(reply).is_err() {
                return false;
            }
        }
        !self.unfinished.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Direction, Event, Stamped};

    fn queued(state: &mut State, n: u8) -> TransferId {
        let id = TransferId([n; 16]);
        state.apply(&Stamped {
            time_ms: 1,
            event: Event::queued_bare(
                id,
                crate::core::DeviceId::from_sha256(&[7; 32]),
                Direction::Send,
                format!("f{n}"),
                10,
            ),
        });
        id
    }

    fn apply(state: &mut State, event: Event) -> Changed {
        let id = event.transfer().expect("a transfer's event");
        state.apply(&Stamped { time_ms: 2, event });
        let t = &state.transfers[&id];
        Changed::from([(id, TransferRow::of(state, &id, t))])
    }

    /// A client hears only its own transfers' changes, once each, and its stream closes when
    /// the last one finishes; a queued transfer nothing happened to is not told at all.
    #[test]
    fn a_follower_hears_its_changes_and_its_stream_ends_when_all_finished() {
        let mut state = State::default();
        let (a, b, other) = (
            queued(&mut state, 1),
            queued(&mut state, 2),
            queued(&mut state, 3),
        );
        let (tx, rx) = async_channel::bounded(16);
        let mut followers = Followers::default();
        followers.add(&[a, b], &state, tx);
        assert!(rx.try_recv().is_err(), "nothing moved yet");
        assert!(followers.follows(&a) && !followers.follows(&other));

        let changed = apply(
            &mut state,
            Event::TransferFailed {
                id: other,
                reason: "x".into(),
            },
        );
        followers.tell(&changed);
        assert!(rx.try_recv().is_err(), "not this client's transfer");

        let changed = apply(&mut state, Event::TransferCompleted { id: a, path: None });
        followers.tell(&changed);
        let Ok(Reply::Transfers { transfers, .. }) = rx.try_recv() else {
            panic!("a's row")
        };
        assert_eq!(transfers.len(), 1);
        assert_eq!(transfers[0].status, TransferStatus::Completed);
        assert!(!followers.is_empty());

        let changed = apply(
            &mut state,
            Event::TransferCancelled {
                id: b,
                by: crate::core::Side::Remote,
                reason: "no".into(),
            },
        );
        followers.tell(&changed);
        assert!(matches!(rx.try_recv(), Ok(Reply::Transfers { .. })));
        assert!(followers.is_empty(), "all finished: the stream ends");
        assert!(rx.is_closed());
    }

    /// A client that does not read is dropped instead of holding rows without bound.
    #[test]
    fn a_follower_that_does_not_keep_up_is_dropped() {
        let mut state = State::default();
        let ids: Vec<TransferId> = (0..4).map(|n| queued(&mut state, n)).collect();
        let (tx, _rx) = async_channel::bounded(1);
        let mut followers = Followers::default();
        followers.add(&ids, &state, tx);
        for id in &ids[..2] {
            let changed = apply(
                &mut state,
                Event::ChunksDurable {
                    id: *id,
                    start: 0,
                    end: 1,
                },
            );
            followers.tell(&changed);
        }
        assert!(followers.is_empty());
    }
}
