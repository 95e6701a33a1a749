//! `fsnode transfers` and `fsnode watch`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{Context, bail};

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cli::{CancelArgs, JsonArg, SendArgs, TransfersArgs};
use crate::commands::client;
use crate::config::resolve_dirs;
use crate::control::{self, Reply, Request, TransferRow};

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

/// Shows progress until every transfer in `ids` has finished. (`ids` is a set: with a list,
/// a `send DIR` of 100,000 files made every poll quadratic.)
fn follow(
    home: Option<&Path>,
    ids: std::collections::HashSet<String>,
    json: bool,
) -> anyhow::Result<()> {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:.bold} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut shown: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut out = std::io::stdout().lock();
    loop {
        let Reply::Transfers { transfers } = client::ask(home, Request::Transfers)? else {
            bail!("unexpected reply from the node");
        };
        let mine: Vec<&TransferRow> = transfers.iter().filter(|t| ids.contains(&t.id)).collect();
        let mut finished = 0;
        let mut failed = 0;
        for t in &mine {
            // A paused transfer (the receiver's disk is full) resumes by itself: keep waiting.
            let done = !matches!(
                t.status.as_str(),
                "queued" | "starting" | "active" | "paused"
            );
            finished += usize::from(done);
            failed += usize::from(done && t.status != "completed");
            if json {
                let line = serde_json::json!({
                    "id": t.id, "peer": t.peer, "name": t.name, "size": t.size,
                    "done_bytes": t.done_bytes, "rate": t.rate, "status": t.status,
                    "reason": t.reason,
                });
                writeln!(out, "{line}")?;
                continue;
            }
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
            if done && !bar.is_finished() {
                bar.finish_with_message(match &t.reason {
                    Some(reason) => format!("{}: {reason}", t.status),
                    None => t.status.clone(),
                });
            } else if !done {
                bar.set_message(match &t.reason {
                    Some(reason) => format!("{}: {reason}", t.status),
                    None => t.status.clone(),
                });
            }
        }
        if finished == mine.len() {
            if failed > 0 {
                return Err(super::TransfersFailed {
                    failed,
                    total: mine.len(),
                }
                .into());
            }
            return Ok(());
        }
        // Every poll lists every live transfer: with a queue of 100,000 the node would spend
        // its time (and memory) answering, so the interval grows with what is followed.
        let base = if json { 1000 } else { 200 };
        let per_count = u64::try_from(mine.len() / 50).unwrap_or(u64::MAX);
        std::thread::sleep(Duration::from_millis(base.max(per_count).min(5000)));
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
    let socket = resolve_dirs(home)?.control_socket();
    let mut stream =
        std::os::unix::net::UnixStream::connect(&socket).map_err(|_| client::NoNode {
            socket: socket.clone(),
        })?;
    stream
        .write_all(&control::encode_request(Request::Watch))
        .context("sending the watch request")?;
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
