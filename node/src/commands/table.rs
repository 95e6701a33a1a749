//! Tables and sizes as the CLI prints them, shared by the commands that show transfers.

use std::io::Write;

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table};

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

/// Longest file name a transfers table shows whole; longer ones lose their middle.
const NAME_CHARS: usize = 48;
/// Longest device name a table shows whole.
const DEVICE_NAME_CHARS: usize = 24;

/// A table of plain columns, each as wide as its widest cell (a long cell widens its column,
/// never wraps or pushes the next one out of line); `right`: the columns of numbers.
pub fn plain(header: &[&str], right: &[usize]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(Cell::new));
    for i in 0..header.len() {
        if let Some(column) = table.column_mut(i) {
            column.set_padding((0, 2));
            if right.contains(&i) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
    }
    table
}

/// Prints `table` without trailing blanks.
pub fn print(out: &mut impl Write, table: &Table) -> anyhow::Result<()> {
    for line in table.lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `text` shortened to `max` characters by taking out its middle (`holiday-ph…-0042.jpg`):
/// the start and the end of a name (its extension, a number) tell it apart best.
pub fn shorten(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max || max < 3 {
        return text.to_owned();
    }
    let tail = (max - 1) / 2;
    let head = max - 1 - tail;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(count - tail).collect();
    format!("{start}…{end}")
}

/// The transfers as `fsnode transfers` and `fsnode peers show` print them.
pub fn transfers(out: &mut impl Write, transfers: &[TransferRow]) -> anyhow::Result<()> {
    if transfers.is_empty() {
        writeln!(out, "no transfers")?;
        return Ok(());
    }
    let mut table = plain(
        &[
            "ID", "WAY", "PEER", "NAME", "SIZE", "DONE", "RATE", "STATUS",
        ],
        &[4, 5, 6],
    );
    for t in transfers {
        let percent = percent_done(t.done_bytes, t.size, t.status);
        let peer = if t.peer_name.is_empty() {
            t.peer.as_str()[..12].to_owned()
        } else {
            shorten(&t.peer_name, DEVICE_NAME_CHARS)
        };
        table.add_row(vec![
            t.id[..8].to_owned(),
            direction_word(t.direction).to_owned(),
            peer,
            shorten(&t.name, NAME_CHARS),
            bytes(t.size),
            format!("{percent:.1}%"),
            t.rate.map_or("-".into(), rate),
            status_text(t.status, t.reason.as_deref()),
        ]);
    }
    print(out, &table)
}

/// A device name as tables show it.
pub fn device_name(name: &str) -> String {
    shorten(name, DEVICE_NAME_CHARS)
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
    fn long_names_lose_their_middle() {
        assert_eq!(shorten("short.txt", 12), "short.txt");
        assert_eq!(
            shorten("holiday-photo-2024-0042.jpg", 15),
            "holiday…042.jpg"
        );
        assert_eq!(
            shorten("holiday-photo-2024-0042.jpg", 15).chars().count(),
            15
        );
        assert_eq!(shorten("ééééééééééé", 5), "éé…éé");
    }

    /// Columns size to their content: a long cell widens its column and every row stays in
    /// line (no cell runs into the next, nothing wraps).
    #[test]
    fn columns_size_to_their_content() {
        let mut table = plain(&["A", "ADDRESS", "N"], &[2]);
        table.add_row(vec!["x", "fe80::1234:5678:9abc:def0", "7"]);
        table.add_row(vec!["yy", "10.0.0.1", "123"]);
        let mut out = Vec::new();
        print(&mut out, &table).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "A   ADDRESS                      N");
        assert_eq!(lines[1], "x   fe80::1234:5678:9abc:def0    7");
        assert_eq!(lines[2], "yy  10.0.0.1                   123");
    }

    #[test]
    fn bytes_are_shown_in_binary_units_as_the_progress_bars() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(67_108_864), "64.00 MiB");
        assert_eq!(rate(10 << 20), "10.00 MiB/s");
    }
}
