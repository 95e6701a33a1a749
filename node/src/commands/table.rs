//! Tables and sizes as the CLI prints them, shared by the commands that show transfers.

use std::io::Write;

use crate::control::TransferRow;
use crate::core::{Direction, TransferStatus};

/// A transfer's status as the CLI prints it (the same word as its JSON form).
pub fn status_word(status: TransferStatus) -> &'static str {
    match status {
        TransferStatus::Queued => "queued",
        TransferStatus::Starting => "starting",
        TransferStatus::Active => "active",
        TransferStatus::Completed => "completed",
        TransferStatus::Rejected => "rejected",
        TransferStatus::Cancelled => "cancelled",
        TransferStatus::Failed => "failed",
        TransferStatus::Paused => "paused",
    }
}

/// A status with its reason, each word once: `paused: no space: …`, `cancelled by the
/// operator` (a reason that starts with the status word stands alone).
pub fn status_text(status: TransferStatus, reason: Option<&str>) -> String {
    let word = status_word(status);
    match reason {
        Some(reason) if reason.starts_with(word) => reason.to_owned(),
        Some(reason) => format!("{word}: {reason}"),
        None => word.to_owned(),
    }
}

fn direction_word(direction: Direction) -> &'static str {
    match direction {
        Direction::Send => "send",
        Direction::Receive => "receive",
    }
}

/// The transfers as `fsnode transfers` and `fsnode peers show` print them.
pub fn transfers(out: &mut impl Write, transfers: &[TransferRow]) -> anyhow::Result<()> {
    if transfers.is_empty() {
        writeln!(out, "no transfers")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<10} {:<8} {:<14} {:<28} {:>10} {:>6} {:>11} STATUS",
        "ID", "WAY", "PEER", "NAME", "SIZE", "DONE", "RATE"
    )?;
    for t in transfers {
        let percent = percent_done(t.done_bytes, t.size, t.status);
        let peer = if t.peer_name.is_empty() {
            t.peer.as_str()[..12].to_owned()
        } else {
            t.peer_name.chars().take(14).collect()
        };
        writeln!(
            out,
            "{:<10} {:<8} {:<14} {:<28} {:>10} {:>5.1}% {:>11} {}",
            &t.id[..8],
            direction_word(t.direction),
            peer,
            t.name.chars().take(28).collect::<String>(),
            bytes(t.size),
            percent,
            t.rate.map_or("-".into(), rate),
            status_text(t.status, t.reason.as_deref()),
        )?;
    }
    Ok(())
}

/// How much of a transfer is done, in percent (an empty file is done once completed).
pub fn percent_done(done_bytes: u64, size: u64, status: TransferStatus) -> f64 {
    if size == 0 {
        if status == TransferStatus::Completed {
            100.0
        } else {
            0.0
        }
    } else {
        done_bytes as f64 * 100.0 / size as f64
    }
}

/// Bytes for humans, in binary units exactly as the progress bars of `send --wait` show them
/// (`64.00 MiB`, `1.46 KiB`): one convention in every command.
pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// A rate in bytes per second, in the same units (`9.40 MiB/s`).
pub fn rate(bytes_per_sec: u64) -> String {
    format!("{}/s", bytes(bytes_per_sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_in_binary_units_as_the_progress_bars() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(67_108_864), "64.00 MiB");
        assert_eq!(rate(10 << 20), "10.00 MiB/s");
    }
}
