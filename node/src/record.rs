//! The node's journal records: events (stamped with wall-clock time) and snapshots of the
//! folded state, stored with the `fsnode-journal` crate.

use serde::{Deserialize, Serialize};

use crate::core::{Stamped, State};
use fsnode_journal::{Record, Seq, TornTail};

/// One journal record's payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JournalEntry {
    Event(Stamped),
    /// The whole state as of this record; replaces every record before it.
    Snapshot {
        time_ms: i64,
        state: State,
    },
}

impl JournalEntry {
    pub fn time_ms(&self) -> i64 {
        match self {
            JournalEntry::Event(stamped) => stamped.time_ms,
            JournalEntry::Snapshot { time_ms, .. } => *time_ms,
        }
    }
}

/// Folds replayed records into state, stopping after `until` if given. Returns the state
/// and the sequence number of the last record folded.
pub fn fold<E>(
    records: impl Iterator<Item = Result<Record<JournalEntry>, E>>,
    until: Option<Seq>,
) -> Result<(State, Option<Seq>), E> {
    let mut state = State::default();
    let mut last = None;
    for record in records {
        let record = record?;
        if until.is_some_and(|until| record.seq > until) {
            break;
        }
        match record.payload {
            JournalEntry::Event(stamped) => state.apply(&stamped),
            JournalEntry::Snapshot {
                state: snapshot, ..
            } => state = snapshot,
        }
        last = Some(record.seq);
    }
    Ok((state, last))
}

/// One line for operators about a torn journal tail.
pub fn describe_torn(torn: &TornTail) -> String {
    format!(
        "{} bytes at offset {} of {} ({})",
        torn.bytes,
        torn.offset,
        torn.segment.display(),
        torn.reason
    )
}
