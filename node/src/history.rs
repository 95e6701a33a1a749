//! Finished transfers read back from the journal's history, for `fsnode transfers --all` and
//! `--since`: the node's state keeps only the most recent finished ones (`core::state`), the
//! journal keeps the rest for as long as its retention says.

use std::collections::VecDeque;

use fsnode_journal::{JournalError, Reader, RecordKind, Seq};

use crate::control::TransferRow;
use crate::core::{Event, State, TransferId, TransferState};
use crate::record::{Fold, JournalEntry};

/// One page of finished transfers, newest first.
#[derive(Debug, Default)]
pub struct Page {
    pub rows: Vec<TransferRow>,
    /// Finished transfers in the history that match (all pages).
    pub total: usize,
    /// The first sequence number the history holds.
    pub history_from: Option<Seq>,
}

/// Reads the whole history once, keeping only the newest `skip + limit` matches in memory, so
/// a journal of a million transfers is paged through in bounded memory.
pub fn finished(
    reader: &Reader<JournalEntry>,
    since_ms: Option<i64>,
    skip: usize,
    limit: usize,
) -> Result<Page, JournalError> {
    let recent =
        |_: &TransferId, t: &TransferState| since_ms.is_none_or(|since| t.updated_at_ms >= since);
    scan(reader, skip, limit, recent)
}

/// The newest finished transfer in the history whose id starts with `prefix` (lowercase hex),
/// for `fsnode cancel` of one that left the node's state.
pub fn find_finished(
    reader: &Reader<JournalEntry>,
    prefix: &str,
) -> Result<Option<TransferRow>, JournalError> {
    let matching = |id: &TransferId, _: &TransferState| id.to_string().starts_with(prefix);
    Ok(scan(reader, 0, 1, matching)?.rows.pop())
}

/// The finished transfers `matches` accepts, newest first, `skip` then at most `limit`.
fn scan(
    reader: &Reader<JournalEntry>,
    skip: usize,
    limit: usize,
    matches: impl Fn(&TransferId, &TransferState) -> bool,
) -> Result<Page, JournalError> {
    let keep = skip.saturating_add(limit);
    let mut newest: VecDeque<TransferRow> = VecDeque::new();
    let mut page = Page::default();
    let mut fold = Fold::default();
    let mut take = |state: &State, id: &TransferId, t: &TransferState, page: &mut Page| {
        if !t.status.is_finished() || !matches(id, t) {
            return;
        }
        page.total += 1;
        newest.push_back(TransferRow::of(state, id, t));
        if newest.len() > keep {
            newest.pop_front();
        }
    };
    // Whether the history so far began with events (then every finish is an event here).
    let mut started = false;
    for record in reader.replay_from(0)? {
        let record = record?;
        page.history_from.get_or_insert(record.seq);
        let finishing = match &record.payload {
            JournalEntry::Event(stamped) => finished_id(&stamped.event),
            _ => None,
        };
        let kind = record.kind;
        fold.apply(record.seq, record.payload);
        match kind {
            RecordKind::Event => {
                started = true;
                if let Some(id) = finishing
                    && let Some(t) = fold.state.transfers.get(&id)
                {
                    take(&fold.state, &id, t, &mut page);
                }
            }
            // History that starts at a snapshot: the finished transfers it remembers come
            // first (their own events were retired).
            RecordKind::Snapshot if !started => {
                started = true;
                let state = &fold.state;
                for id in state.finished.iter().chain(&state.undelivered) {
                    if let Some(t) = state.transfers.get(id) {
                        take(state, id, t, &mut page);
                    }
                }
            }
            _ => {}
        }
    }
    page.rows = newest.into_iter().rev().skip(skip).collect();
    Ok(page)
}

/// The transfer an event finishes, if it is a finishing event.
fn finished_id(event: &Event) -> Option<TransferId> {
    match event {
        Event::TransferCompleted { id, .. }
        | Event::TransferFailed { id, .. }
        | Event::TransferRejected { id, .. }
        | Event::TransferCancelled { id, .. } => Some(*id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use fsnode_journal::{Journal, Options};

    use super::*;
    use crate::core::{DeviceId, Direction, Stamped, TransferStatus};

    /// `cancel` of a transfer that left the node's state finds it in the history by a prefix
    /// of its id, with how it ended; an id the history does not hold is not found.
    #[test]
    fn a_finished_transfer_is_found_in_the_history_by_its_id_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::<JournalEntry>::open(dir.path(), Options::default()).unwrap();
        let peer = DeviceId::from_sha256(&[1; 32]);
        let (done, failed) = (TransferId([0xab; 16]), TransferId([0xcd; 16]));
        let events = [
            Event::queued_bare(done, peer.clone(), Direction::Send, "a.txt".into(), 3),
            Event::queued_bare(failed, peer, Direction::Send, "b.txt".into(), 3),
            Event::TransferCompleted {
                id: done,
                path: None,
            },
            Event::TransferFailed {
                id: failed,
                reason: "source file changed".into(),
            },
        ];
        for event in events {
            let entry = JournalEntry::Event(Stamped { time_ms: 1, event });
            journal.append(&entry).unwrap().wait().unwrap();
        }
        journal.close().unwrap();
        let reader = Reader::open(dir.path(), Options::default()).unwrap();
        let row = find_finished(&reader, "abab").unwrap().expect("found");
        assert_eq!(
            (row.name.as_str(), row.status),
            ("a.txt", TransferStatus::Completed)
        );
        let row = find_finished(&reader, "cdcdcdcd").unwrap().expect("found");
        assert_eq!(row.status, TransferStatus::Failed);
        assert_eq!(row.reason.as_deref(), Some("source file changed"));
        assert!(find_finished(&reader, "0909").unwrap().is_none());
    }
}
