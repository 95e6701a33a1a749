//! Starts queued transfers smallest first, taking turns between peers: the smallest file of
//! each peer, then the second smallest of each, and so on, so one peer's many files do not
//! hold up another's.

use fsnode_plugin::{NodeFacts, Policy, Queued};

pub struct SmallestFirst;

/// The round-robin order: peers take turns (in the order their smallest file sorts), each
/// giving its next-smallest file (ties: the one queued first).
pub fn order(queue: &[Queued]) -> Vec<String> {
    let mut by_peer: Vec<(&str, Vec<&Queued>)> = Vec::new();
    for q in queue {
        match by_peer.iter_mut().find(|(peer, _)| *peer == q.peer) {
            Some((_, files)) => files.push(q),
            None => by_peer.push((&q.peer, vec![q])),
        }
    }
    for (_, files) in &mut by_peer {
        files.sort_by_key(|q| (q.size, q.queued_at_ms));
    }
    by_peer.sort_by_key(|(_, files)| files.first().map(|q| (q.size, q.queued_at_ms)));
    let rounds = by_peer.iter().map(|(_, f)| f.len()).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|round| {
            by_peer
                .iter()
                .filter_map(move |(_, files)| files.get(round))
                .map(|q| q.transfer_id.clone())
        })
        .collect()
}

impl Policy for SmallestFirst {
    fn configure(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn schedule(
        &self,
        _node: &NodeFacts,
        queue: &[Queued],
        _connected: &[String],
    ) -> Option<Vec<String>> {
        Some(order(queue))
    }
}

fsnode_plugin::plugin!(SmallestFirst);

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: &str, peer: &str, size: u64, at: i64) -> Queued {
        Queued {
            transfer_id: id.into(),
            peer: peer.into(),
            name: id.into(),
            size,
            mime: String::new(),
            done_bytes: 0,
            queued_at_ms: at,
        }
    }

    #[test]
    fn smallest_first_taking_turns_between_peers() {
        let queue = [
            q("a-big", "A", 900, 1),
            q("a-small", "A", 10, 2),
            q("a-mid", "A", 50, 3),
            q("b-mid", "B", 40, 4),
            q("b-big", "B", 800, 5),
        ];
        assert_eq!(
            order(&queue),
            ["a-small", "b-mid", "a-mid", "b-big", "a-big"]
        );
    }

    #[test]
    fn ties_keep_queue_order_and_empty_is_empty() {
        assert_eq!(order(&[q("x", "A", 5, 2), q("y", "A", 5, 1)]), ["y", "x"]);
        assert!(order(&[]).is_empty());
    }
}
