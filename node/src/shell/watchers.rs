//! `fsnode watch` clients: every journaled event goes to each, in order, none left out.
//!
//! The node loop hands each watcher's connection the events of every durable batch through a
//! bounded queue ([`Watchers`]). A watcher whose client reads more slowly than the node journals
//! (a terminal, a pipe into a slow consumer, a busy send of thousands of files) fills its queue;
//! the node then stops queueing for it and tells its connection where it fell behind
//! ([`WatchItem::Behind`]). The connection ([`stream`]) reads the missed events back from the
//! journal at its client's pace, up to what the node has delivered (durable), then asks to
//! follow live again from there; until it has caught up it may take several such rounds. The
//! client hears of it once per fall (`lagged N events`), and gets every event exactly once.
//!
//! Memory stays bounded whatever the client's speed: the queue, plus one read batch of
//! [`READ_BATCH`] records during a catch-up. A watcher is dropped only with a reason it is told:
//! the events it missed are no longer in the journal (retired history), the journal cannot be
//! read, or the node stops.

use std::time::Duration;

use async_channel::{Receiver, Sender};
use fsnode_journal::{Journal, JournalError, Replay};
use futures_lite::AsyncWriteExt;
use tracing::debug;

use crate::control::{self, ErrorKind, Reply};
use crate::core::Stamped;
use crate::record::JournalEntry;
use crate::shell::control::{ControlRequest, WATCH_QUEUE};
use crate::shell::runtime::{self, net::UnixStream};

/// Slots of a watcher's queue kept for what ends a registration ([`WatchItem::Behind`] or
/// [`WatchItem::CatchUp`]) and for [`WatchItem::Stopping`]: the node never has to drop one
/// for lack of room.
const RESERVED_SLOTS: usize = 2;

/// Journal records read per trip to the blocking pool while catching up.
pub const READ_BATCH: usize = 256;

/// How long a stopping node waits for its watchers' connections to pass on what is queued.
pub const STOP_FLUSH: Duration = Duration::from_secs(2);

/// What the node loop tells one watcher's connection.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchItem {
    /// A durable event.
    Event {
        seq: u64,
        time_ms: i64,
        event: serde_json::Value,
    },
    /// The queue was full at the event `from`: nothing more is queued; register again from
    /// `from` to learn how far to read the journal.
    Behind { from: u64 },
    /// The events from the registration's `from` up to `until` (`events` of them) are durable
    /// and delivered already: read them from the journal, then register again from `until + 1`.
    CatchUp { until: u64, events: u64 },
    /// The node is stopping.
    Stopping { reason: String },
}

/// A watcher's connection asking to follow the node's events: from now on (`from: None`, a new
/// watcher) or from the event `from` on (after falling behind). `items` is the same channel in
/// every registration of one connection.
pub struct WatchRequest {
    pub from: Option<u64>,
    pub items: Sender<WatchItem>,
}

/// The watchers of the node loop.
pub struct Watchers {
    list: Vec<Watcher>,
    /// The last sequence number whose batch the loop has carried out (so it is durable).
    delivered: u64,
    /// Events carried out so far (snapshot records are not events), to count what a watcher
    /// missed.
    events_delivered: u64,
}

struct Watcher {
    items: Sender<WatchItem>,
    following: Following,
}

enum Following {
    /// Gets every event from `next` on.
    Live { next: u64 },
    /// Its connection reads from the journal; nothing is queued until it registers again.
    /// `events_at`: [`Watchers::events_delivered`] when it was told where to read to, or at
    /// the event it fell behind at.
    Behind { events_at: u64 },
}

impl Watchers {
    /// `delivered`: the last record already durable when the loop starts.
    pub fn new(delivered: u64) -> Self {
        Watchers {
            list: Vec::new(),
            delivered,
            events_delivered: 0,
        }
    }

    /// Whether some connection follows the events (then every event is kept until its batch is
    /// carried out, for [`Watchers::tell`]).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// A connection (re)registers. `next_seq`: the sequence number the journal assigns next (a
    /// new watcher follows from there). Asked for events already delivered, it is told to read
    /// them from the journal (and stays registered, so that nothing appended meanwhile is lost).
    pub fn register(&mut self, request: WatchRequest, next_seq: u64) {
        self.list.retain(|w| !w.items.is_closed());
        let WatchRequest { from, items } = request;
        let from = from.unwrap_or(next_seq);
        let existing = self.list.iter().position(|w| w.items.same_channel(&items));
        let events_at = existing.and_then(|i| match self.list[i].following {
            Following::Behind { events_at } => Some(events_at),
            Following::Live { .. } => None,
        });
        let following = if from <= self.delivered {
            let missed = self.events_delivered - events_at.unwrap_or(self.events_delivered);
            let catch_up = WatchItem::CatchUp {
                until: self.delivered,
                events: missed,
            };
            // Room is reserved for it: the connection read everything before its last item.
            let _ = items.try_send(catch_up);
            Following::Behind {
                events_at: self.events_delivered,
            }
        } else {
            Following::Live { next: from }
        };
        match existing {
            Some(i) => self.list[i].following = following,
            None => self.list.push(Watcher { items, following }),
        }
    }

    /// Queues a durable batch's events (sequence number, event) for the watchers that follow
    /// them live; `last_seq`: the batch's last record. A watcher whose queue is full is told
    /// where it fell behind; one whose connection went away is dropped.
    pub fn tell(&mut self, journaled: &[(u64, Stamped)], last_seq: Option<u64>) {
        for (seq, stamped) in journaled {
            let mut json = None;
            let events_at = self.events_delivered;
            self.list.retain_mut(|w| {
                if w.items.is_closed() {
                    return false;
                }
                let Following::Live { next } = &mut w.following else {
                    return true;
                };
                if *seq < *next {
                    return true;
                }
                if w.items.len() + RESERVED_SLOTS >= WATCH_QUEUE {
                    let _ = w.items.try_send(WatchItem::Behind { from: *seq });
                    w.following = Following::Behind { events_at };
                    return true;
                }
                *next = seq + 1;
                let event = json.get_or_insert_with(|| stamped.event.to_json()).clone();
                w.items
                    .try_send(WatchItem::Event {
                        seq: *seq,
                        time_ms: stamped.time_ms,
                        event,
                    })
                    .is_ok()
            });
            self.events_delivered += 1;
        }
        if let Some(last) = last_seq {
            self.delivered = self.delivered.max(last);
        }
    }

    /// The node is stopping: each connection is told, after what is queued for it.
    pub fn stop(&mut self, reason: &str) {
        for w in &self.list {
            let _ = w.items.try_send(WatchItem::Stopping {
                reason: reason.to_owned(),
            });
        }
    }

    /// Whether every watcher's connection has ended.
    pub fn all_gone(&self) -> bool {
        self.list.iter().all(|w| w.items.is_closed())
    }
}

/// Why a watcher cannot be caught up from the journal.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error(
        "this watcher fell behind the node by more than the journal keeps: the events from seq {from} to {oldest_missing} were retired from its history; run `fsnode watch` again (and `fsnode journal show` for what is left)"
    )]
    Retired { from: u64, oldest_missing: u64 },
    #[error(
        "the journal ended at seq {last} while this watcher was reading it up to seq {until}; run `fsnode watch` again, and `fsnode journal verify`"
    )]
    Short { last: u64, until: u64 },
    #[error("reading the node's journal to catch this watcher up: {0}")]
    Journal(#[from] JournalError),
}

/// Reads the events of a range of the journal in batches (snapshot records are skipped).
pub struct JournalCursor {
    replay: Replay<JournalEntry>,
    /// The next sequence number expected.
    next: u64,
    until: u64,
}

impl JournalCursor {
    /// The events from `from` to `until`, both included (blocking: opens files).
    pub fn open(
        journal: &Journal<JournalEntry>,
        from: u64,
        until: u64,
    ) -> Result<Self, CatchUpError> {
        Ok(JournalCursor {
            replay: journal.replay_from(from)?,
            next: from,
            until,
        })
    }

    /// Whether the whole range has been read.
    pub fn is_done(&self) -> bool {
        self.next > self.until
    }

    /// The next at most `max` events of the range (blocking: reads files).
    pub fn read(&mut self, max: usize) -> Result<Vec<WatchItem>, CatchUpError> {
        let mut events = Vec::new();
        while !self.is_done() && events.len() < max {
            let Some(record) = self.replay.next() else {
                return Err(CatchUpError::Short {
                    last: self.next - 1,
                    until: self.until,
                });
            };
            let record = record?;
            if record.seq != self.next {
                // Replay starts at the oldest record kept when the asked one was retired.
                return Err(CatchUpError::Retired {
                    from: self.next,
                    oldest_missing: record.seq - 1,
                });
            }
            self.next += 1;
            if let JournalEntry::Event(stamped) = record.payload {
                events.push(WatchItem::Event {
                    seq: record.seq,
                    time_ms: stamped.time_ms,
                    event: stamped.event.to_json(),
                });
            }
        }
        Ok(events)
    }
}

/// Serves one `watch` connection until its client goes or the node stops: registers with the
/// node loop, writes the events it queues, and whenever the node says the watcher fell behind,
/// reads the missed events from the journal and registers again after them.
pub async fn stream(
    socket: &mut UnixStream,
    requests: &Sender<ControlRequest>,
    journal: &Journal<JournalEntry>,
) -> anyhow::Result<()> {
    let (items_tx, items) = async_channel::bounded(WATCH_QUEUE);
    let mut from = None;
    // Where the watcher fell behind, until the node says how far to read.
    let mut fell_behind = None;
    loop {
        let request = WatchRequest {
            from,
            items: items_tx.clone(),
        };
        if requests.send(ControlRequest::Watch(request)).await.is_err() {
            return stopped(socket, &items).await;
        }
        loop {
            let item = match items.recv().await {
                Ok(item) => item,
                Err(_) => return stopped(socket, &items).await,
            };
            match item {
                WatchItem::Event {
                    seq,
                    time_ms,
                    event,
                } => {
                    let reply = Reply::Event {
                        seq,
                        time_ms,
                        event,
                    };
                    socket.write_all(&control::encode_reply(reply)).await?;
                }
                WatchItem::Behind { from: at } => {
                    debug!(
                        seq = at,
                        "a watcher fell behind; it catches up from the journal"
                    );
                    fell_behind = Some(at);
                    from = Some(at);
                    break;
                }
                WatchItem::CatchUp { until, events } => {
                    let start = from.unwrap_or(until + 1);
                    if let Some(at) = fell_behind.take() {
                        let lagged = Reply::Lagged {
                            events,
                            from_seq: at,
                            to_seq: until,
                        };
                        socket.write_all(&control::encode_reply(lagged)).await?;
                    }
                    if let Err(e) = catch_up(socket, journal, start, until).await? {
                        let reply = Reply::error(ErrorKind::Internal, format!("{e}"));
                        socket.write_all(&control::encode_reply(reply)).await?;
                        return Ok(());
                    }
                    from = Some(until + 1);
                    break;
                }
                WatchItem::Stopping { reason } => {
                    let reply = Reply::NodeStopping { reason };
                    socket.write_all(&control::encode_reply(reply)).await?;
                    return Ok(());
                }
            }
        }
    }
}

/// Writes the events `from..=until` from the journal to the client. The outer error is the
/// client's connection; the inner one what the watcher is told before it is dropped.
async fn catch_up(
    socket: &mut UnixStream,
    journal: &Journal<JournalEntry>,
    from: u64,
    until: u64,
) -> anyhow::Result<Result<(), CatchUpError>> {
    let journal = journal.clone();
    let opened = runtime::unblock(move || JournalCursor::open(&journal, from, until)).await;
    let mut cursor = match opened {
        Ok(cursor) => cursor,
        Err(e) => return Ok(Err(e)),
    };
    while !cursor.is_done() {
        let (back, read) = runtime::unblock(move || {
            let read = cursor.read(READ_BATCH);
            (cursor, read)
        })
        .await;
        cursor = back;
        let events = match read {
            Ok(events) => events,
            Err(e) => return Ok(Err(e)),
        };
        let mut lines = Vec::new();
        for item in events {
            if let WatchItem::Event {
                seq,
                time_ms,
                event,
            } = item
            {
                lines.extend(control::encode_reply(Reply::Event {
                    seq,
                    time_ms,
                    event,
                }));
            }
        }
        socket.write_all(&lines).await?;
    }
    Ok(Ok(()))
}

/// The node loop is gone: passes on what it queued, then says so, with its reason if it gave
/// one.
async fn stopped(socket: &mut UnixStream, items: &Receiver<WatchItem>) -> anyhow::Result<()> {
    let mut reason = "the node is stopping".to_owned();
    while let Ok(item) = items.try_recv() {
        match item {
            WatchItem::Event {
                seq,
                time_ms,
                event,
            } => {
                let reply = Reply::Event {
                    seq,
                    time_ms,
                    event,
                };
                socket.write_all(&control::encode_reply(reply)).await?;
            }
            WatchItem::Stopping { reason: given } => reason = given,
            WatchItem::Behind { .. } | WatchItem::CatchUp { .. } => {}
        }
    }
    let reply = Reply::NodeStopping { reason };
    socket.write_all(&control::encode_reply(reply)).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
