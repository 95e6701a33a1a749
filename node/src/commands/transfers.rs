//! `fsnode transfers` and `fsnode watch`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{Context, bail};

use std::collections::BTreeMap;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cli::{CancelArgs, JsonArg, SendArgs, TransfersArgs};
use crate::commands::client;
use crate::config::resolve_dirs;
use crate::control::{self, Reply, Request, TransferRow};
use crate::core::TransferStatus;

pub fn transfers(home: Option<&Path>, args: &TransfersArgs) -> anyhow::Result<()> {
    if args.all || args.since.is_some() {
        return history(home, args);
    }
    let reply = client::ask(home, Request::Transfers)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&reply)?)?;
        return Ok(());
    }
    let Reply::Transfers { transfers } = reply else {
        bail!("unexpected reply from the node: {reply:?}");
    };
    super::table::transfers(&mut out, &transfers)
}

/// `--all` / `--since`: finished transfers from the journal's history, read directly (no node
/// needed; a running node's journal is read without disturbing it).
fn history(home: Option<&Path>, args: &TransfersArgs) -> anyhow::Result<()> {
    let dir = resolve_dirs(home)?.journal();
    if !dir.is_dir() {
        bail!("no journal at {}: this node has never run", dir.display());
    }
    let reader = fsnode_journal::Reader::open(&dir, fsnode_journal::Options::default())
        .with_context(|| format!("opening the journal at {}", dir.display()))?;
    let since_ms = args.since.map(|d| {
        let now = crate::shell::runtime::Clock::wall_ms(&crate::shell::runtime::SystemClock);
        now - i64::try_from(d.as_millis()).unwrap_or(i64::MAX).min(now)
    });
    let page = crate::history::finished(&reader, since_ms, args.skip, args.limit.max(1))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = serde_json::json!({
            "transfers": page.rows, "total": page.total, "skip": args.skip,
            "history_from_seq": page.history_from,
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    super::table::transfers(&mut out, &page.rows)?;
    let shown = page.rows.len();
    writeln!(
        out,
        "{} of {} finished transfer(s) in the journal's history (from seq {}), newest first{}",
        shown,
        page.total,
        page.history_from.map_or("-".into(), |s| s.to_string()),
        if args.skip + shown < page.total {
            format!("; next page: --skip {}", args.skip + shown)
        } else {
            String::new()
        }
    )?;
    Ok(())
}

pub fn send(home: Option<&Path>, args: &SendArgs) -> anyhow::Result<()> {
    let paths = args
        .paths
        .iter()
        .map(|p| std::path::absolute(p).with_context(|| format!("resolving {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reply = client::ask(
        home,
        Request::Send {
            paths,
            to: args.to.clone(),
        },
    )?;
    let Reply::Queued { transfers } = reply else {
        bail!("unexpected reply from the node: {reply:?}");
    };
    let mut out = std::io::stdout().lock();
    if !args.wait {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&transfers)?)?;
        } else {
            writeln!(out, "queued {} transfer(s):", transfers.len())?;
            super::table::transfers(&mut out, &transfers)?;
        }
        return Ok(());
    }
    drop(out);
    follow(
        home,
        transfers.iter().map(|t| t.id.clone()).collect(),
        args.json,
    )
}

/// Shows progress until every transfer in `ids` has finished, from the node's stream of
/// their changes (`follow`: their rows at once, then each row that changed).
fn follow(home: Option<&Path>, ids: Vec<String>, json: bool) -> anyhow::Result<()> {
    let stream = client::stream(
        home,
        Request::Follow {
            transfers: ids.clone(),
        },
    )?;
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:.bold} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut shown: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut latest: BTreeMap<String, TransferRow> = BTreeMap::new();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(&stream).lines() {
        let line = line.context("reading the transfers' changes from the node")?;
        let envelope: control::ReplyEnvelope = serde_json::from_str(&line)
            .with_context(|| format!("the node's reply is not understood: {line}"))?;
        let transfers = match envelope.reply {
            Reply::Transfers { transfers } => transfers,
            Reply::Error(error) => return Err(client::refusal(&error)),
            other => bail!("unexpected reply from the node: {other:?}"),
        };
        for t in transfers {
            if json {
                let line = serde_json::json!({
                    "id": t.id, "peer": t.peer, "name": t.name, "size": t.size,
                    "done_bytes": t.done_bytes, "rate": t.rate, "status": t.status,
                    "reason": t.reason,
                });
                writeln!(out, "{line}")?;
            } else {
                show(&bars, &style, &mut shown, &t);
            }
            latest.insert(t.id.clone(), t);
        }
        out.flush()?;
        // A paused transfer (the receiver's disk is full) resumes by itself: keep waiting.
        let finished = latest.values().filter(|t| t.status.is_finished()).count();
        if finished == ids.len() {
            let failed = latest
                .values()
                .filter(|t| t.status != TransferStatus::Completed)
                .count();
            if failed > 0 {
                return Err(super::TransfersFailed {
                    failed,
                    total: ids.len(),
                }
                .into());
            }
            return Ok(());
        }
    }
    bail!("the node stopped before the transfers finished")
}

/// One transfer's progress bar, created the first time it is shown.
fn show(
    bars: &MultiProgress,
    style: &ProgressStyle,
    shown: &mut BTreeMap<String, ProgressBar>,
    t: &TransferRow,
) {
    let bar = shown.entry(t.id.clone()).or_insert_with(|| {
        let bar = bars.add(ProgressBar::new(t.size));
        bar.set_style(style.clone());
        let peer = if t.peer_name.is_empty() {
            t.peer.as_str()[..12].to_owned()
        } else {
            t.peer_name.clone()
        };
        bar.set_prefix(format!("{} → {peer}", t.name));
        bar
    });
    bar.set_position(t.done_bytes);
    let status = super::table::status_word(t.status);
    let message = match &t.reason {
        Some(reason) => format!("{status}: {reason}"),
        None => status.to_owned(),
    };
    if t.status.is_finished() {
        if !bar.is_finished() {
            bar.finish_with_message(message);
        }
    } else {
        bar.set_message(message);
    }
}

pub fn cancel(home: Option<&Path>, args: &CancelArgs) -> anyhow::Result<()> {
    let reply = client::ask(
        home,
        Request::Cancel {
            transfer: args.transfer.clone(),
        },
    )?;
    let mut out = std::io::stdout().lock();
    match reply {
        _ if args.json => writeln!(out, "{}", serde_json::to_string(&reply)?)?,
        Reply::Cancelled { transfer } => {
            writeln!(out, "cancelled {} ({})", transfer.id, transfer.name)?
        }
        other => bail!("unexpected reply from the node: {other:?}"),
    }
    Ok(())
}

/// Streams the node's journaled events until the node stops or the pipe closes.
pub fn watch(home: Option<&Path>, args: &JsonArg) -> anyhow::Result<()> {
    let stream = client::stream(home, Request::Watch)?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(&stream).lines() {
        let line = line.context("reading events from the node")?;
        let envelope: control::ReplyEnvelope = serde_json::from_str(&line)
            .with_context(|| format!("the node's event is not understood: {line}"))?;
        match envelope.reply {
            Reply::Event {
                seq,
                time_ms,
                event,
            } => {
                if args.json {
                    let line = serde_json::json!({"seq": seq, "time_ms": time_ms, "event": event});
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(out, "{seq:>8} {}", super::journal::human_event_json(&event))?;
                }
                out.flush()?;
            }
            Reply::Error(error) => bail!("{}", error.message),
            other => bail!("unexpected reply from the node: {other:?}"),
        }
    }
    Ok(())
}
