//! `fsnode run`: the daemon. Opens identity and journal, replays the journal into state, then
//! serves until SIGINT/SIGTERM and records a clean stop.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use fsnode_journal::{Journal, Options};
use futures_lite::StreamExt;
use tracing::{info, warn};

use crate::cli::RunArgs;
use crate::config::Config;
use crate::core::{Event, Stamped, State};
use crate::identity::{Identity, Origin};
use crate::record::{self, JournalEntry};
use crate::shell::clock::{Clock, SystemClock};

/// Once the journal holds more records than this at startup, the node writes a snapshot of its
/// state, which lets the journal drop everything before it.
pub const COMPACT_AFTER_RECORDS: u64 = 100_000;

/// Installs the stderr logger. Quiet by default (warnings, plus the node's own start and stop
/// lines); `-v` debug, `-vv` trace; `FSNODE_LOG` (an `EnvFilter` directive) overrides both.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,fsnode=info",
        1 => "info,fsnode=debug",
        _ => "debug,fsnode=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FSNODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

pub fn run(home: Option<&Path>, args: &RunArgs) -> anyhow::Result<()> {
    let config = Config::resolve(home, args)?;
    let clock = SystemClock;
    let dirs = &config.dirs;
    create_private_dir(&dirs.data)?;
    create_private_dir(&dirs.runtime)?;

    let (identity, origin) = Identity::load_or_create(&dirs.identity(), clock.wall())?;
    if origin == Origin::Created {
        info!(path = %identity.path.display(), "created a new identity");
    }

    let journal_dir = dirs.journal();
    let (journal, report) = Journal::<JournalEntry>::open(&journal_dir, Options::default())
        .with_context(|| format!("opening the journal at {}", journal_dir.display()))?;
    if let Some(torn) = &report.truncated_tail {
        warn!(
            "the journal's last record was torn (the node stopped mid-write) and was dropped: {}",
            record::describe_torn(torn)
        );
    }
    let (mut state, _) = record::fold(journal.replay()?, None)?;
    if report.records > COMPACT_AFTER_RECORDS {
        compact(&journal, &state, clock.wall_ms())?;
    }

    let started = Stamped {
        time_ms: clock.wall_ms(),
        event: Event::NodeStarted {
            device_id: identity.device_id.clone(),
            name: config.name.clone(),
            device_type: config.device_type,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
    };
    record_event(&journal, &mut state, started)?;
    info!(
        device_id = %identity.device_id,
        name = %config.name,
        device_type = %config.device_type,
        "fsnode running; stop with Ctrl-C or SIGTERM"
    );

    let reason = smol::block_on(wait_for_stop_signal())?;
    info!(%reason, "stopping");
    let stopped = Stamped {
        time_ms: clock.wall_ms(),
        event: Event::NodeStopped { reason },
    };
    record_event(&journal, &mut state, stopped)?;
    journal.close().context("closing the journal")?;
    Ok(())
}

/// Appends an event, waits until it is durable, then folds it into state: event first,
/// effect after.
fn record_event(
    journal: &Journal<JournalEntry>,
    state: &mut State,
    stamped: Stamped,
) -> anyhow::Result<()> {
    journal
        .append(&JournalEntry::Event(stamped.clone()))?
        .wait()
        .context("writing to the journal")?;
    state.apply(&stamped);
    Ok(())
}

fn compact(journal: &Journal<JournalEntry>, state: &State, time_ms: i64) -> anyhow::Result<()> {
    let snapshot = JournalEntry::Snapshot {
        time_ms,
        state: state.clone(),
    };
    let seq = journal.snapshot(&snapshot)?.wait()?;
    info!(seq, "compacted the journal into a snapshot");
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<String> {
    use async_signal::{Signal, Signals};
    let mut signals =
        Signals::new([Signal::Term, Signal::Int]).context("installing signal handlers")?;
    let signal = signals
        .next()
        .await
        .context("signal stream ended")?
        .context("reading a signal")?;
    Ok(match signal {
        Signal::Term => "SIGTERM".into(),
        Signal::Int => "SIGINT".into(),
        other => format!("{other:?}"),
    })
}

/// Creates `dir` (and parents) readable by this user only: it holds the private key, the
/// journal and the control socket.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mode = fs::metadata(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        warn!(dir = %dir.display(), "directory is readable by other users; fsnode keeps its key and journal here");
    }
    Ok(())
}
