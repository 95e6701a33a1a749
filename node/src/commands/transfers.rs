//! `fsnode transfers` and `fsnode watch`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{Context, bail};

use std::collections::BTreeMap;

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};

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
    let Reply::Transfers {
        transfers,
        not_shown,
    } = reply
    else {
        bail!("unexpected reply from the node: {reply:?}");
    };
    super::table::transfers(&mut out, &transfers)?;
    if not_shown > 0 {
        writeln!(
            out,
            "… and {not_shown} more queued or finished (`fsnode transfers --json` has the count; \
             `--all` reads the history)"
        )?;
    }
    Ok(())
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
    let request = Request::Send {
        paths,
        to: args.to.clone(),
        wait: args.wait,
    };
    if args.wait {
        return send_and_follow(home, request, args.json);
    }
    let reply = client::ask(home, request)?;
    let Reply::Queued {
        count, transfers, ..
    } = reply
    else {
        bail!("unexpected reply from the node: {reply:?}");
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&transfers)?)?;
    } else {
        writeln!(out, "queued {count} transfer(s):")?;
        super::table::transfers(&mut out, &transfers)?;
    }
    if count > transfers.len() {
        eprintln!(
            "(the first {} of {count} shown; `fsnode transfers` lists them all)",
            transfers.len()
        );
    }
    Ok(())
}

/// Sends shown one progress bar each; more than this share one bar.
const BARS_MAX: usize = 20;

/// `send --wait`: queues, then shows progress from the node's stream of the transfers'
/// changes until every one has finished (the node closes the stream then).
fn send_and_follow(home: Option<&Path>, request: Request, json: bool) -> anyhow::Result<()> {
    let stream = client::stream(home, request)?;
    let mut lines = BufReader::new(&stream).lines();
    let mut next = || -> anyhow::Result<Option<Reply>> {
        let Some(line) = lines.next() else {
            return Ok(None);
        };
        let line = line.context("reading the transfers' changes from the node")?;
        let envelope: control::ReplyEnvelope = serde_json::from_str(&line)
            .with_context(|| format!("the node's reply is not understood: {line}"))?;
        match envelope.reply {
            Reply::Error(error) => Err(client::refusal(&error)),
            reply => Ok(Some(reply)),
        }
    };
    let (count, bytes, first) = match next()? {
        Some(Reply::Queued {
            count,
            bytes,
            transfers,
        }) => (count, bytes, transfers),
        None => bail!("the node closed the connection without answering"),
        Some(other) => bail!("unexpected reply from the node: {other:?}"),
    };
    let mut progress = Progress::new(count, bytes, json);
    for t in &first {
        progress.show(t);
    }
    // Not on a terminal (a log, a script): one line per finished transfer instead of bars.
    let summary = !json && !std::io::stdout().is_terminal();
    let unfinished: Arc<Mutex<BTreeSet<String>>> = Arc::new(Mutex::new(
        first
            .iter()
            .filter(|t| !t.status.is_finished())
            .map(|t| t.id.clone())
            .collect(),
    ));
    on_interrupt(progress.bars.clone(), Arc::clone(&unfinished))?;
    let mut out = std::io::stdout().lock();
    // Each transfer's latest state: finished or not, and bytes done.
    let mut latest: BTreeMap<String, (TransferStatus, u64)> = BTreeMap::new();
    let mut tally = Tally::default();
    while tally.finished < count {
        let transfers = match next()? {
            Some(Reply::Transfers { transfers, .. }) => transfers,
            None => bail!("the node stopped before the transfers finished"),
            Some(other) => bail!("unexpected reply from the node: {other:?}"),
        };
        for t in transfers {
            if json {
                let line = serde_json::json!({
                    "id": t.id, "peer": t.peer, "name": t.name, "size": t.size,
                    "done_bytes": t.done_bytes, "rate": t.rate, "status": t.status,
                    "reason": t.reason,
                });
                writeln!(out, "{line}")?;
            }
            let before = latest.insert(t.id.clone(), (t.status, t.done_bytes));
            let newly_finished =
                t.status.is_finished() && !before.is_some_and(|(s, _)| s.is_finished());
            if newly_finished {
                tally.finished += 1;
                if t.status != TransferStatus::Completed {
                    tally.failed += 1;
                }
            }
            let was_done = before.map_or(0, |(_, done)| done);
            progress.changed(&t, was_done, newly_finished, tally);
            if newly_finished {
                lock(&unfinished).remove(&t.id);
                if summary {
                    writeln!(out, "{}", finished_line(&t))?;
                }
            } else if !t.status.is_finished() {
                lock(&unfinished).insert(t.id.clone());
            }
        }
        out.flush()?;
    }
    progress.finish();
    if summary {
        writeln!(
            out,
            "{} of {count} transfer(s) completed ({})",
            count - tally.failed,
            super::table::bytes(bytes)
        )?;
    }
    if tally.failed > 0 {
        return Err(super::TransfersFailed {
            failed: tally.failed,
            total: count,
        }
        .into());
    }
    Ok(())
}

/// A finished transfer in one line, as `send --wait` prints it when not on a terminal:
/// `notes.txt → beta: completed (12.00 MiB at 9.40 MiB/s)`.
fn finished_line(t: &TransferRow) -> String {
    let peer = if t.peer_name.is_empty() {
        t.peer.short().to_string()
    } else {
        t.peer_name.clone()
    };
    let status = super::table::status_text(t.status, t.reason.as_deref());
    let rate = t
        .rate
        .map(|r| format!(" at {}", super::table::rate(r)))
        .unwrap_or_default();
    format!(
        "{} → {peer}: {status} ({}{rate})",
        t.name,
        super::table::bytes(t.size)
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ctrl-C (or SIGTERM) on `send --wait` stops following, not sending: says so, and how to
/// follow or stop what is still going, then exits 130 (143 for SIGTERM).
fn on_interrupt(
    bars: MultiProgress,
    unfinished: Arc<Mutex<BTreeSet<String>>>,
) -> anyhow::Result<()> {
    use async_signal::{Signal, Signals};
    use futures_lite::StreamExt;
    let mut signals =
        Signals::new([Signal::Int, Signal::Term]).context("installing the Ctrl-C handler")?;
    std::thread::Builder::new()
        .name("fsnode-interrupt".into())
        .spawn(move || {
            let signal = smol::block_on(signals.next());
            let code = match signal {
                Some(Ok(Signal::Term)) => 143,
                _ => 130,
            };
            let ids: Vec<String> = lock(&unfinished)
                .iter()
                .take(4)
                .map(|id| id[..8].to_owned())
                .collect();
            let stop = match ids.as_slice() {
                [one] => format!("`fsnode cancel {one}` stops it"),
                [] => "`fsnode cancel ID` stops a transfer".to_owned(),
                some => format!(
                    "`fsnode cancel ID` stops one ({}{})",
                    some.join(", "),
                    if lock(&unfinished).len() > some.len() { ", …" } else { "" }
                ),
            };
            let _ = bars.clear();
            eprintln!(
                "\ninterrupted: still sending in the background; `fsnode transfers` follows it, {stop}"
            );
            std::process::exit(code);
        })
        .context("starting the Ctrl-C handler")?;
    Ok(())
}

/// How many of a send's transfers have finished, and how many of those did not complete.
#[derive(Clone, Copy, Default)]
struct Tally {
    finished: usize,
    failed: usize,
}

/// What `send --wait` shows on a terminal: a bar per transfer for a few, one bar for many.
struct Progress {
    bars: MultiProgress,
    style: ProgressStyle,
    shown: BTreeMap<String, ProgressBar>,
    /// The one bar of a send of more than [`BARS_MAX`] transfers.
    all: Option<ProgressBar>,
    count: usize,
}

impl Progress {
    fn new(count: usize, bytes: u64, json: bool) -> Self {
        let bars = if json {
            MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        } else {
            MultiProgress::new()
        };
        // A bar of fixed width (a wide bar shrank as messages grew), and `--` for the rate and
        // the time left until a rate is known (it said `0 B/s eta 0s`).
        let style = ProgressStyle::with_template(
            "{prefix:.bold} {bar:32} {bytes}/{total_bytes} {rate} eta {left} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = match known_rate(state) {
                    Some(rate) => write!(w, "{}/s", indicatif::HumanBytes(rate as u64)),
                    None => write!(w, "--"),
                };
            },
        )
        .with_key(
            "left",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = match known_rate(state) {
                    Some(_) => write!(w, "{:#}", indicatif::HumanDuration(state.eta())),
                    None => write!(w, "--"),
                };
            },
        );
        let all = (count > BARS_MAX).then(|| {
            let bar = bars.add(ProgressBar::new(bytes));
            bar.set_style(style.clone());
            bar.set_prefix(format!("{count} transfers"));
            bar
        });
        Progress {
            bars,
            style,
            shown: BTreeMap::new(),
            all,
            count,
        }
    }

    /// A row of the `queued` reply.
    fn show(&mut self, t: &TransferRow) {
        if self.all.is_none() {
            show(&self.bars, &self.style, &mut self.shown, t);
        }
    }

    /// A row that changed: `was_done` its bytes done as last shown, `newly_finished` whether
    /// it finished just now, `tally` the send's finishes so far.
    fn changed(&mut self, t: &TransferRow, was_done: u64, newly_finished: bool, tally: Tally) {
        let Some(all) = &self.all else {
            show(&self.bars, &self.style, &mut self.shown, t);
            return;
        };
        all.inc(t.done_bytes.saturating_sub(was_done));
        if newly_finished && t.status != TransferStatus::Completed {
            let status = super::table::status_text(t.status, t.reason.as_deref());
            all.println(format!("{} → {}: {status}", t.name, t.peer_name));
        }
        all.set_message(format!(
            "{} of {} finished{}",
            tally.finished,
            self.count,
            if tally.failed > 0 {
                format!(", {} not completed", tally.failed)
            } else {
                String::new()
            }
        ));
    }

    fn finish(&self) {
        if let Some(all) = &self.all {
            all.finish();
        }
    }
}

/// The bar's rate once bytes have moved (none before: no `0 B/s`, no `eta 0s`).
fn known_rate(state: &ProgressState) -> Option<f64> {
    let rate = state.per_sec();
    (state.pos() > 0 && rate.is_finite() && rate > 0.0).then_some(rate)
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
    let message = super::table::status_text(t.status, t.reason.as_deref());
    if t.status.is_finished() {
        if !bar.is_finished() {
            bar.finish_with_message(message);
        }
    } else {
        bar.set_message(message);
    }
}

pub fn cancel(home: Option<&Path>, args: &CancelArgs) -> anyhow::Result<()> {
    let socket = resolve_dirs(home)?.control_socket();
    let request = Request::Cancel {
        transfer: args.transfer.clone(),
    };
    let reply = match client::request(&socket, request)? {
        Reply::Error(error) if error.kind == control::ErrorKind::NotFound => {
            // Older finished transfers left the node's state for the journal's history.
            let typed = args.transfer.trim().to_ascii_lowercase();
            match finished_in_history(home, &typed) {
                Some(t) => bail!(
                    "{}",
                    crate::core::request::nothing_to_cancel(
                        &t.id,
                        &t.name,
                        t.status,
                        t.reason.as_deref()
                    )
                ),
                None => bail!(
                    "{}; `fsnode transfers` lists the live and recent ones, `fsnode transfers --all` the finished ones",
                    error.message
                ),
            }
        }
        Reply::Error(error) => return Err(client::refusal(&error)),
        reply => reply,
    };
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

/// The newest finished transfer in this node's journal history whose id starts with `prefix`
/// (best effort: an unreadable journal finds nothing).
fn finished_in_history(home: Option<&Path>, prefix: &str) -> Option<TransferRow> {
    let dir = resolve_dirs(home).ok()?.journal();
    let reader = fsnode_journal::Reader::open(&dir, fsnode_journal::Options::default()).ok()?;
    crate::history::find_finished(&reader, prefix).ok()?
}

/// Streams the node's journaled events until the node stops or the pipe closes. A watcher that
/// fell behind is caught up by the node from its journal (a `lagged` note on stderr); the stream
/// ends with the node's word on why (its stop: exit 0; anything else: an error).
pub fn watch(home: Option<&Path>, args: &JsonArg) -> anyhow::Result<()> {
    let stream = client::stream(home, Request::Watch)?;
    let mut out = std::io::stdout().lock();
    let mut last_seq = None;
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
                last_seq = Some(seq);
            }
            // On stderr: stdout stays the events, every one of them, in order.
            Reply::Lagged {
                events,
                from_seq,
                to_seq,
            } => eprintln!(
                "lagged {events} events behind the node (seq {from_seq}-{to_seq}); catching up from its journal"
            ),
            Reply::NodeStopping { reason } => {
                eprintln!("the node is stopping ({reason}); watch ends");
                return Ok(());
            }
            Reply::Error(error) => bail!("{}", error.message),
            other => bail!("unexpected reply from the node: {other:?}"),
        }
    }
    let resume = match last_seq {
        Some(seq) => format!(
            "the last event shown is seq {seq}; `fsnode journal show --from {}` lists what followed",
            seq + 1
        ),
        None => "`fsnode journal show` lists what the node journaled".to_owned(),
    };
    bail!("the node closed the event stream without saying why (was it killed?); {resume}")
}
