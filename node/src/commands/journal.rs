//! `fsnode journal show|verify|replay`: read a journal without a running node (also a copied
//! journal directory), never modifying it; `fsnode journal repair`: cut a damaged one at its
//! first damage, keeping what it cuts.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use fsnode_journal::{Options, Reader, RecordKind};

use crate::cli::{JournalArgs, JournalCommand};
use crate::config::resolve_dirs;
use crate::core::State;
use crate::record::{self, JournalEntry};

pub fn journal(home: Option<&Path>, args: &JournalArgs) -> anyhow::Result<()> {
    let dir = match &args.journal {
        Some(dir) => dir.clone(),
        None => resolve_dirs(home)?.journal(),
    };
    if !dir.is_dir() {
        bail!(
            "no journal at {}: pass --journal DIR, or --home for the node whose journal to read",
            dir.display()
        );
    }
    let reader = Reader::<JournalEntry>::open(&dir, Options::default())
        .with_context(|| format!("opening the journal at {}", dir.display()))?;
    let mut out = std::io::stdout().lock();
    match &args.command {
        JournalCommand::Show { json, from } => {
            // On stderr: stdout stays one line per record.
            eprintln!("{}", history(&reader)?);
            show(&reader, &mut out, *json, from.unwrap_or(0))
        }
        JournalCommand::Verify => {
            verify(&reader, &dir, &mut out).map_err(|err| with_repair_hint(err, &dir))?;
            writeln!(out, "  {}", history(&reader)?)?;
            Ok(())
        }
        JournalCommand::Replay { until, json } => replay(&reader, &mut out, *until, *json),
        JournalCommand::Repair { yes, keep } => {
            repair(&reader, &dir, keep.as_deref(), *yes, &mut out)
        }
    }
}

/// What a repair would do with the damage in `dir`, as advice appended to an error about it:
/// `None` when the journal has no damage a repair would cut.
pub fn repair_hint(dir: &Path) -> Option<String> {
    let reader = Reader::<JournalEntry>::open(dir, Options::default()).ok()?;
    let damage = reader.damage().ok()??;
    Some(format!(
        "`fsnode journal repair` cuts the journal there: it keeps the {} record(s) before the \
         damage and moves the {} record(s) from it on (the damaged one included) into a \
         directory beside the journal",
        damage.records_kept, damage.records_lost
    ))
}

/// `err` (about the journal in `dir`) with [`repair_hint`] said after it when there is damage
/// to cut.
pub fn with_repair_hint(err: anyhow::Error, dir: &Path) -> anyhow::Error {
    match repair_hint(dir) {
        Some(hint) => crate::exit::JournalDamaged(format!("{err:#}; {hint}")).into(),
        None => err,
    }
}

fn repair(
    reader: &Reader<JournalEntry>,
    dir: &Path,
    keep: Option<&Path>,
    yes: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let damage = reader
        .damage()
        .with_context(|| format!("reading the journal at {}", dir.display()))?;
    let Some(damage) = damage else {
        writeln!(
            out,
            "journal {}: no damage; nothing to repair (a torn last record is dropped by the node \
             itself when it starts)",
            dir.display()
        )?;
        return Ok(());
    };
    let keep = match keep {
        Some(keep) => keep.to_owned(),
        None => {
            use crate::shell::runtime::{Clock, SystemClock};
            let stamp = humantime::format_rfc3339_seconds(SystemClock.wall())
                .to_string()
                .replace(':', "");
            dir.with_file_name(format!(
                "{}.cut-{stamp}",
                dir.file_name()
                    .map_or("journal".into(), |n| n.to_string_lossy())
            ))
        }
    };
    writeln!(
        out,
        "journal {}: damaged in {} at byte {}: {}",
        dir.display(),
        damage.segment.display(),
        damage.offset,
        damage.reason
    )?;
    writeln!(
        out,
        "  a repair keeps the {} record(s) before the damage and cuts {} record(s) (the damaged \
         one and every intact one after it{}), moving them into {}",
        damage.records_kept,
        damage.records_lost,
        if damage.later_segments.is_empty() {
            String::new()
        } else {
            format!(", with {} later segment(s)", damage.later_segments.len())
        },
        keep.display()
    )?;
    out.flush()?;
    if !yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            bail!("not repaired: confirm with --yes (stdin is not a terminal to ask on)");
        }
        eprint!("Repair? [y/N] ");
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .context("reading the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not repaired: nothing was changed");
        }
    }
    let repaired = fsnode_journal::repair(dir, &Options::default(), &keep).with_context(|| {
        match dir.parent() {
            Some(_) => format!(
                "repairing the journal at {} (a running node holds its lock: stop it first)",
                dir.display()
            ),
            None => format!("repairing the journal at {}", dir.display()),
        }
    })?;
    match repaired {
        Some(repaired) => {
            writeln!(
                out,
                "repaired: {} record(s) kept; what was cut is in {}",
                repaired.damage.records_kept,
                repaired
                    .kept_in
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            writeln!(
                out,
                "  `fsnode journal verify` checks the result; `fsnode run` starts the node"
            )?;
        }
        None => writeln!(
            out,
            "journal {}: no damage any more; nothing was cut",
            dir.display()
        )?,
    }
    Ok(())
}

fn show(
    reader: &Reader<JournalEntry>,
    out: &mut impl Write,
    json: bool,
    from: u64,
) -> anyhow::Result<()> {
    for record in reader.replay_from(from)? {
        let record = record?;
        let time = record
            .payload
            .time_ms()
            .map_or_else(|| "-".to_owned(), format_time);
        if json {
            let line = match &record.payload {
                JournalEntry::Event(stamped) => serde_json::json!({
                    "seq": record.seq, "time": time, "event": stamped.event.to_json(),
                }),
                JournalEntry::Snapshot { state, .. } => serde_json::json!({
                    "seq": record.seq, "time": time, "snapshot": state,
                }),
                JournalEntry::SnapshotPart { peers, transfers } => serde_json::json!({
                    "seq": record.seq, "snapshot_part": { "peers": peers, "transfers": transfers },
                }),
            };
            let mut line = line;
            crate::core::event::hashes_in_hex(&mut line);
            writeln!(out, "{line}")?;
        } else {
            let text = match &record.payload {
                JournalEntry::Event(stamped) => human_event(&stamped.event),
                JournalEntry::Snapshot { state, .. } => format!(
                    "Snapshot peers={} trusted={} transfers={}",
                    state.peers.len(),
                    state.trusted().count(),
                    state.transfers.len()
                ),
                JournalEntry::SnapshotPart { peers, transfers } => format!(
                    "SnapshotPart peers={} transfers={}",
                    peers.len(),
                    transfers.len()
                ),
            };
            writeln!(out, "{:>8} {time} {text}", record.seq)?;
        }
    }
    Ok(())
}

/// Where the journal's history starts (older records were retired, or it starts at seq 1) and
/// where the node's replay starts (its newest snapshot).
pub fn history(reader: &Reader<JournalEntry>) -> anyhow::Result<String> {
    let first = match reader.replay_from(0)?.next() {
        Some(record) => record?,
        None => return Ok("history: the journal is empty".into()),
    };
    let mut text = if first.seq == 1 {
        "history: complete, from seq 1".to_owned()
    } else {
        format!(
            "history: from seq {} (a snapshot; older records were retired under the retention)",
            first.seq
        )
    };
    if let Some(time) = first.payload.time_ms() {
        text.push_str(&format!(" at {}", format_time(time)));
    }
    if let Some(Ok(start)) = reader.replay()?.next()
        && start.seq != first.seq
    {
        text.push_str(&format!(
            "; the node's state replays from the snapshot at seq {}",
            start.seq
        ));
    }
    Ok(text)
}

/// `Kind key=value …`, from the event's JSON form so every field shows without a hand-written
/// formatter per event.
fn human_event(event: &crate::core::Event) -> String {
    human_event_json(&event.to_json())
}

/// `Kind key=value …` from an event's flat JSON form (also what `fsnode watch` prints).
pub(super) fn human_event_json(event: &serde_json::Value) -> String {
    let mut text = event["type"].as_str().unwrap_or("?").to_owned();
    if let serde_json::Value::Object(fields) = event {
        for (key, value) in fields {
            if key == "type" {
                continue;
            }
            let value = match value {
                serde_json::Value::String(s)
                    if !s.is_empty() && !s.contains(char::is_whitespace) =>
                {
                    s.clone()
                }
                other => other.to_string(),
            };
            text.push_str(&format!(" {key}={value}"));
        }
    }
    text
}

fn verify(reader: &Reader<JournalEntry>, dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let report = reader
        .verify()
        .with_context(|| format!("verifying the journal at {}", dir.display()))?;
    writeln!(out, "journal {}: intact", dir.display())?;
    writeln!(
        out,
        "  {} records in {} segment(s), seq {}..{}, {} snapshot(s)",
        report.records,
        report.segments,
        report.first_seq.map_or("-".into(), |s| s.to_string()),
        report.last_seq.map_or("-".into(), |s| s.to_string()),
        report.snapshots
    )?;
    if let Some(torn) = &report.torn_tail {
        writeln!(
            out,
            "  note: the last record is torn (a crash mid-write): {}. The node drops it when it \
             next starts; every record before it is intact.",
            crate::record::describe_torn(torn)
        )?;
    }
    Ok(())
}

fn replay(
    reader: &Reader<JournalEntry>,
    out: &mut impl Write,
    until: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let mut records = reader.replay_from(0)?.peekable();
    if let (Some(until), Some(Ok(first))) = (until, records.peek())
        && first.seq > until
        && matches!(first.kind, RecordKind::Snapshot | RecordKind::SnapshotPart)
    {
        bail!(
            "the journal was compacted: the earliest state it holds is at seq {}, after {until}",
            first.seq
        );
    }
    let (state, last) = record::fold(records, until)?;
    if json {
        let mut value = serde_json::json!({ "seq": last, "state": state });
        crate::core::event::hashes_in_hex(&mut value);
        writeln!(out, "{value}")?;
    } else {
        print_state(out, &state, last)?;
    }
    Ok(())
}

fn print_state(out: &mut impl Write, state: &State, last: Option<u64>) -> anyhow::Result<()> {
    writeln!(
        out,
        "state after seq {}",
        last.map_or("- (empty journal)".into(), |s| s.to_string())
    )?;
    if let Some(node) = &state.node {
        writeln!(
            out,
            "node {} name={} type={} version={} starts={} {}",
            node.device_id,
            node.name,
            node.device_type,
            node.version,
            state.starts,
            if node.running {
                "running (or crashed)"
            } else {
                "stopped cleanly"
            }
        )?;
    }
    writeln!(out, "\npeers ({}):", state.peers.len())?;
    for (id, peer) in &state.peers {
        let addresses: Vec<String> = peer.addresses.iter().map(|a| a.to_string()).collect();
        writeln!(
            out,
            "  {} {:<20} {:<8} {:<24} {:<9} {}{}",
            id.short(),
            peer.name,
            peer.device_type,
            if addresses.is_empty() {
                "-".into()
            } else {
                format!("{}:{}", addresses.join(","), peer.port)
            },
            if peer.trusted { "trusted" } else { "untrusted" },
            peer.connection.label(),
            if peer.requested_at_ms.is_some() && !peer.trusted {
                " (asked to connect)"
            } else {
                ""
            },
        )?;
    }
    writeln!(out, "\ntransfers ({}):", state.transfers.len())?;
    for (id, t) in &state.transfers {
        let percent = super::table::percent_done(t.durable_bytes(), t.size, t.status);
        writeln!(
            out,
            "  {} {:?} {} {} {} {:.1}% ({}/{} chunks) {}",
            id.short(),
            t.direction,
            t.peer.short(),
            t.name,
            super::table::bytes(t.size),
            percent,
            t.next,
            t.chunks,
            super::table::status_text(t.status, t.reason.as_deref()),
        )?;
    }
    Ok(())
}

fn format_time(ms: i64) -> String {
    let Ok(ms) = u64::try_from(ms) else {
        return format!("{ms}ms");
    };
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}
