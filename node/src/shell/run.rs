//! `fsnode run`: the daemon. Opens identity and journal, replays the journal into state, then
//! serves until SIGINT/SIGTERM and records a clean stop.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use fsnode_journal::Journal;
use futures_lite::StreamExt;
use tracing::{debug, info, warn};

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::RunArgs;
use crate::config::Config;
use crate::control::{
    ErrorKind, NodeStatus, Reply, Request, TransferRow, reply as control_reply,
    view as control_view,
};
use crate::core::DeviceId;
use crate::core::TransferId;
use crate::core::admission::{ConnectionBudgets, Limits};
use crate::core::node::{ConnId, Core, Effect, Input, Me, Now, Output, QueuedFile, Token};
use crate::core::policy::Policy;
use crate::core::request::Outcome;
use crate::core::router::{Input as RouterInput, Output as RouterOutput, Router};
use crate::core::{Event, Stamped, State};
use crate::identity::{Identity, Origin};
use crate::record::{self, JournalEntry};
use crate::shell::atomic_file::{self, Replace};
use crate::shell::commit::{Batch, CommitQueue};
use crate::shell::control::{self, ControlRequest};
use crate::shell::event_log;
use crate::shell::followers::{Changed, Followers};
use crate::shell::local_names::LocalNames;
use crate::shell::mdns::Mdns;
use crate::shell::policy::PolicyThread;
use crate::shell::rtc::RtcAdapter;
use crate::shell::runtime::{self, Clock, SystemClock};
use crate::shell::signaling::{ConnEvent, Reporter};
use crate::shell::sources;
use crate::shell::store::Store;
use crate::shell::transfer_io::TransferIo;
use crate::shell::watchers::{self, Watchers};
use crate::shell::{network, signaling, trust_file};

/// Once the journal holds more records than this since its newest snapshot at startup (and
/// every time this many more are written while running), the node writes a snapshot of its
/// state; replay starts there, and the records before it become history.
pub const COMPACT_AFTER_RECORDS: u64 = 100_000;

/// Log lines that may wait for a slow stderr; more are dropped.
pub const LOG_QUEUE_LINES: usize = 4096;

/// Installs the stderr logger. Quiet by default: the node's own warnings and its start and
/// stop lines, nothing from dependencies (webrtc-rs warns on every connection about things
/// that are normal on a LAN); `-v` adds dependencies' warnings and info and the node's debug,
/// `-vv` trace; `FSNODE_LOG` (an `EnvFilter` directive) overrides both.
///
/// Lines go through a bounded, lossy queue to a writer thread: a stderr nobody reads (a
/// supervisor's full pipe) drops log lines instead of stalling the node. Keep the returned
/// guard until exit; dropping it flushes what is queued.
pub fn init_logging(verbose: u8) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(std::io::stderr());
    // dcsctp logs every SCTP packet in hex at `info`: kept out unless asked for by name.
    let default = match verbose {
        0 => "off,fsnode=info",
        1 => "info,dcsctp=warn,fsnode=debug",
        _ => "debug,dcsctp=warn,fsnode=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FSNODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person at a terminal: a log file or a supervisor's journal gets
    // plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
    guard
}

pub fn run(home: Option<&Path>, args: &RunArgs) -> anyhow::Result<()> {
    let config = Config::resolve(home, args)?;
    let clock = SystemClock;
    runtime::raise_open_file_limit();
    let dirs = &config.dirs;
    create_private_dir(&dirs.data)?;
    create_private_dir(&dirs.runtime)?;
    let store = Store::new(dirs.receive.clone())
        .and_then(|store| store.check_writable().map(|()| store))
        .map_err(|error| crate::config::ConfigError::ReceiveDir {
            path: dirs.receive.clone(),
            error,
        })?;

    let (identity, origin) = Identity::load_or_create(&dirs.identity(), clock.wall())?;
    if origin == Origin::Created {
        info!(path = %identity.path.display(), "created a new identity");
    }
    // The control socket first: it refuses to start a second node on the same home before
    // that node touches the journal.
    let control_listener = control::bind(&dirs.control_socket())?;

    let journal_dir = dirs.journal();
    let (journal, report) = open_journal_waiting(&journal_dir, &config.journal)
        .with_context(|| format!("opening the journal at {}", journal_dir.display()))
        .map_err(|err| crate::commands::journal::with_repair_hint(err, &journal_dir))?;
    if let Some(torn) = &report.truncated_tail {
        warn!(
            "the journal's last record was torn (the node stopped mid-write) and was dropped: {}",
            record::describe_torn(torn)
        );
    }
    let (mut state, _) = journal
        .replay()
        .and_then(|records| record::fold(records, None))
        .with_context(|| format!("reading the journal at {}", journal_dir.display()))
        .map_err(|err| crate::commands::journal::with_repair_hint(err, &journal_dir))?;
    if report.records > COMPACT_AFTER_RECORDS {
        // A snapshot only saves time at the next start: failing to write one is no reason
        // not to start now.
        if let Err(e) = compact(&journal, &state, clock.wall_ms()) {
            warn!(
                "could not compact the journal (the node runs on; it tries again at the next start): {e:#}"
            );
        }
    }

    // Signal handlers before `NodeStarted` is journaled: whoever sees the node started (a
    // service manager, a test) may stop it at once, and that must be a clean stop.
    let signals =
        async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
            .context("installing signal handlers")?;
    runtime::block_on(async {
        let addresses = network::listen_addresses(&config.interfaces)?;
        let (listeners, port) =
            signaling::bind(&addresses, config.port, config.port_is_default).await?;
        let me = Me {
            id: identity.device_id.clone(),
            name: config.name.clone(),
            device_type: config.device_type,
            signaling_port: port,
        };
        let started = Stamped {
            time_ms: clock.wall_ms(),
            event: Event::NodeStarted {
                device_id: me.id.clone(),
                name: me.name.clone(),
                device_type: me.device_type,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        };
        record_event(&journal, &mut state, started)?;

        let (inputs_tx, inputs) = async_channel::bounded::<Input>(1024);
        // One slice of a prepared send at a time (see `SEND_SLICE`).
        let (prepared_tx, prepared) = async_channel::bounded::<Input>(1);
        let (conns_tx, conns) = async_channel::bounded::<ConnEvent>(1024);
        let (requests_tx, requests) = async_channel::bounded::<ControlRequest>(64);
        let reporter = Reporter::new(me.hello(), inputs_tx.clone(), conns_tx);
        let inbound = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let budgets = Arc::new(std::sync::Mutex::new(ConnectionBudgets::new(
            Limits::default(),
        )));
        for listener in listeners {
            let accept =
                signaling::accept(listener, reporter.clone(), inbound.clone(), budgets.clone());
            runtime::spawn(accept).detach();
        }
        let ice_addresses = addresses
            .iter()
            .map(|ip| std::net::SocketAddr::new(*ip, 0))
            .collect();
        let quic = crate::core::link::quic::QuicSettings {
            enabled: config.link.quic,
            congestion: config.link.congestion,
            ..Default::default()
        };
        let rtc = RtcAdapter::new(Arc::new(identity), ice_addresses, quic, inputs_tx.clone());
        let io = TransferIo::new(store, inputs_tx.clone());
        runtime::spawn(control::serve(
            control_listener,
            requests_tx,
            journal.clone(),
        ))
        .detach();
        let mdns = Mdns::start(&me, &config.interfaces, inputs_tx.clone())?;
        let page_urls: Vec<String> = network::page_addresses(&addresses)
            .into_iter()
            .map(|ip| network::page_url(ip, port))
            .collect();
        // LocalSend, when on: its HTTPS port and multicast group on the same addresses.
        let localsend = match &config.localsend {
            Some(settings) => {
                let (cert, key, fingerprint) =
                    crate::shell::localsend::certificate(&dirs.data.join("localsend.pem"))?;
                let adapter = crate::shell::localsend::LocalSendAdapter::start(
                    &addresses,
                    settings.port,
                    cert,
                    key,
                    inputs_tx.clone(),
                )
                .await?;
                info!(
                    port = settings.port,
                    fingerprint = %hex::encode(fingerprint),
                    "LocalSend on"
                );
                Some((
                    adapter,
                    crate::core::localsend::Settings {
                        fingerprint,
                        port: settings.port,
                        pin: settings.pin.clone(),
                        device_type: match config.device_type {
                            crate::core::DeviceType::Server => "server",
                            _ => "headless",
                        },
                    },
                ))
            }
            None => None,
        };
        info!(
            device_id = %me.id,
            name = %me.name,
            device_type = %me.device_type,
            port,
            quic = config.link.quic,
            congestion = config.link.congestion.name(),
            page = %page_urls.join(" "),
            "fsnode running; stop with Ctrl-C or SIGTERM"
        );

        // Plugins load before the first input: a plugin that fails to load is journaled
        // (`PluginDisabled`) and the node runs on without it.
        let mut host = crate::policy::PluginHost::load(&config.plugins)
            .context("starting the policy plugin host")?;
        let described = Policy::describe(&host);
        let has_plugins = !described.is_empty();
        let loaded = crate::core::policy::in_use(&described);
        let load_failures = host.take_disabled();
        let policy = PolicyThread::start(Box::new(host), inputs_tx.clone())
            .context("starting the policy thread")?;
        // New or changed plugins are loaded without a restart.
        let _plugin_dir_watch = policy.watch_dir(config.plugins.clone());
        let (localsend, localsend_settings) = match localsend {
            Some((adapter, settings)) => (Some(adapter), Some(settings)),
            None => (None, None),
        };
        let mut core = Core::new(me, state, clock.now());
        if let Some(settings) = localsend_settings {
            core.enable_localsend(settings, clock.now());
        }
        let mut node = NodeLoop {
            core,
            localsend,
            policy,
            journal: &journal,
            clock: &clock,
            trust_file: dirs.trust_file(),
            plugin_settings: config.plugins.clone(),
            receive_dir: dirs.receive.clone(),
            pause_warnings: BTreeSet::new(),
            reporter,
            rtc,
            local_names: LocalNames::new(mdns.daemon(), inputs_tx.clone()),
            io,
            prepared: prepared_tx,
            pending: HashMap::new(),
            next_token: 0,
            router: Router::new(),
            writers: HashMap::new(),
            watchers: Watchers::new(journal.last_seq().unwrap_or(0)),
            followers: Followers::default(),
            collected: Collected::default(),
            committing: CommitQueue::default(),
            page_urls,
        };
        if has_plugins {
            let now = Now {
                instant: clock.now(),
                wall_ms: clock.wall_ms(),
            };
            node.core.use_plugins(loaded, load_failures, now);
        }
        node.drain().await?;
        node.write_trust_file();
        let reason = node
            .serve(inputs, prepared, conns, requests, signals)
            .await?;
        info!(%reason, "stopping");
        // Watchers were told; their connections pass on what is queued for them first.
        let flush = runtime::Stopwatch::start();
        while !node.watchers.all_gone() && flush.elapsed() < watchers::STOP_FLUSH {
            runtime::sleep(std::time::Duration::from_millis(20)).await;
        }
        mdns.shutdown();
        let stopped = Stamped {
            time_ms: clock.wall_ms(),
            event: Event::NodeStopped { reason },
        };
        let mut state = node.core.state().clone();
        record_event(&journal, &mut state, stopped)?;
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_file(dirs.control_socket());
    journal.close().context("closing the journal")?;
    Ok(())
}

/// How long `run` waits for the journal's lock. This node holds the control socket, so no
/// other node runs on this home: the lock is a short command's (`trust add` without a node),
/// released within moments.
pub const JOURNAL_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens the journal as its writer, waiting up to [`JOURNAL_LOCK_WAIT`] while another process
/// holds its lock.
fn open_journal_waiting(
    dir: &Path,
    options: &fsnode_journal::Options,
) -> Result<(Journal<JournalEntry>, fsnode_journal::OpenReport), fsnode_journal::JournalError> {
    let deadline = SystemClock.now() + JOURNAL_LOCK_WAIT;
    loop {
        match Journal::<JournalEntry>::open(dir, options.clone()) {
            Err(fsnode_journal::JournalError::Locked { .. }) if SystemClock.now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

/// What the node loop selects over.
enum Wake {
    Input(Input),
    Conn(ConnEvent),
    Request(ControlRequest),
    Timer,
    Stop(String),
    /// The oldest committing batch's events are durable (or the journal failed).
    Committed(Result<(), fsnode_journal::JournalError>),
}

/// Inputs handled together before their events are committed and their effects run.
const MAX_INPUT_BATCH: usize = 64;

/// Batches appended to the journal and not durable yet, at most: while they commit the loop
/// handles further inputs and appends their events (group commit without a pause), and their
/// effects wait for their own fsync. Beyond this many the loop waits for the oldest.
const MAX_COMMITS_IN_FLIGHT: usize = 4;

/// Outputs taken from the core and not carried out yet.
#[derive(Default)]
struct Collected {
    /// The journal ticket of the last event appended (records become durable in order).
    last_pending: Option<fsnode_journal::Pending>,
    actions: Vec<Output>,
    /// The events the batch's carrying out needs again: all of them while `watch` clients
    /// listen, else only those with follow-ups (a `send DIR` of 100,000 files journals
    /// 100,000 records at once; holding a copy of each until the fsync was ~35 MB).
    journaled: Vec<(u64, Stamped)>,
    /// Sequence numbers of the first and last event appended.
    seqs: Option<(u64, u64)>,
    /// The rows of followed transfers these events changed.
    changed: Changed,
}

/// A committed batch's outputs: its journaled events (for watchers and follow-ups) and its
/// replies and effects.
struct Outputs {
    actions: Vec<Output>,
    journaled: Vec<(u64, Stamped)>,
    /// The sequence number of the batch's last event.
    last_seq: Option<u64>,
    /// The rows of followed transfers (`send --wait`) the batch changed, as they stood when
    /// its events were appended.
    changed: Changed,
}

/// A control client waiting for its command's outcome; `follow`: a `send --wait`, which then
/// follows the transfers queued.
struct Client {
    reply: async_channel::Sender<Reply>,
    follow: bool,
}

/// The one task that owns the core: feeds it inputs, journals its events, then carries out
/// its replies and effects (event first, then effect).
struct NodeLoop<'a> {
    core: Core,
    /// LocalSend's HTTPS and multicast, when on.
    localsend: Option<crate::shell::localsend::LocalSendAdapter>,
    /// Runs the plugins off this loop.
    policy: PolicyThread,
    journal: &'a Journal<JournalEntry>,
    clock: &'a SystemClock,
    trust_file: PathBuf,
    /// Where the plugins are loaded from again (`fsnode plugins reload`).
    plugin_settings: crate::policy::Settings,
    receive_dir: PathBuf,
    /// Why received transfers are paused (`no space`), each warned about once, again once no
    /// received transfer is paused any more.
    pause_warnings: BTreeSet<String>,
    reporter: Reporter,
    rtc: RtcAdapter,
    /// Rewrites browsers' `.local` candidates on their way to `rtc`.
    local_names: LocalNames,
    io: TransferIo,
    /// Where send preparations deliver their slices, one at a time.
    prepared: async_channel::Sender<Input>,
    /// Clients waiting for what came of their command.
    pending: HashMap<Token, Client>,
    next_token: Token,
    /// Which connection carries each peer's messages, what waits, when to dial (the core's
    /// sans-IO router; this loop only carries out what it says).
    router: Router,
    /// The writer of each open signaling connection (dropping one closes it gracefully).
    writers: HashMap<ConnId, async_channel::Sender<Vec<u8>>>,
    /// `fsnode watch` clients: every journaled event goes to each.
    watchers: Watchers,
    /// `send --wait` clients: the rows of their transfers, each time some changed.
    followers: Followers,
    collected: Collected,
    /// Batches whose events are appended, oldest first: each one's replies and effects run
    /// once its events are durable, in order (see [`MAX_COMMITS_IN_FLIGHT`]).
    committing: CommitQueue<Outputs>,
    /// The node's page on each address it serves (`fsnode id`).
    page_urls: Vec<String>,
}

impl NodeLoop<'_> {
    async fn serve(
        &mut self,
        inputs: async_channel::Receiver<Input>,
        prepared: async_channel::Receiver<Input>,
        conns: async_channel::Receiver<ConnEvent>,
        requests: async_channel::Receiver<ControlRequest>,
        signals: async_signal::Signals,
    ) -> anyhow::Result<String> {
        let stop = runtime::spawn(wait_for_stop_signal(signals));
        let mut stop = Some(stop);
        let mut deadline = runtime::Deadline::default();
        loop {
            let due = [self.core.poll_timeout(), self.router.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let timer = deadline.wait(due);
            let stop_fut = stop.as_mut().expect("stop future present");
            let oldest_commit = self.committing.oldest_pending();
            // `or` polls its first future first: a batch that became durable runs its effects
            // before anything new; connection events go before inputs, so a connection is
            // registered before any message that arrived on it is handled (its task sends `Up`
            // before it forwards a single message).
            let committed = async {
                match oldest_commit {
                    Some(pending) => Wake::Committed(pending.await.map(|_| ())),
                    None => std::future::pending().await,
                }
            };
            let wake = futures_lite::future::or(
                committed,
                futures_lite::future::or(
                    async { conns.recv().await.map(Wake::Conn).unwrap_or(Wake::Timer) },
                    futures_lite::future::or(
                        futures_lite::future::or(
                            async { inputs.recv().await.map(Wake::Input).unwrap_or(Wake::Timer) },
                            async {
                                prepared
                                    .recv()
                                    .await
                                    .map(Wake::Input)
                                    .unwrap_or(Wake::Timer)
                            },
                        ),
                        futures_lite::future::or(
                            async {
                                requests
                                    .recv()
                                    .await
                                    .map(Wake::Request)
                                    .unwrap_or(Wake::Timer)
                            },
                            futures_lite::future::or(
                                async {
                                    timer.await;
                                    Wake::Timer
                                },
                                async {
                                    match stop_fut.await {
                                        Ok(reason) => Wake::Stop(reason),
                                        Err(err) => {
                                            Wake::Stop(format!("signal handling failed: {err:#}"))
                                        }
                                    }
                                },
                            ),
                        ),
                    ),
                ),
            )
            .await;
            let now = Now {
                instant: self.clock.now(),
                wall_ms: self.clock.wall_ms(),
            };
            match wake {
                Wake::Input(input) => {
                    self.core.handle(input, now);
                    self.handle_ready_inputs(&inputs, &conns)?;
                }
                Wake::Conn(event) => self.on_conn(event),
                Wake::Request(ControlRequest::Watch(request)) => {
                    let next_seq = self.journal.last_seq().map_or(1, |seq| seq + 1);
                    self.watchers.register(request, next_seq);
                    continue;
                }
                Wake::Request(ControlRequest::Ask {
                    request: Request::Plugins,
                    reply,
                }) => {
                    self.policy.describe(reply);
                    continue;
                }
                Wake::Request(ControlRequest::Ask {
                    request: Request::Status,
                    reply,
                }) => {
                    let mut status = NodeStatus::of(self.core.me());
                    status.urls = self.page_urls.clone();
                    let _ = reply.try_send(Reply::Status(status));
                    continue;
                }
                Wake::Request(ControlRequest::Ask {
                    request: Request::PluginsReload,
                    reply,
                }) => {
                    self.policy.reload(&self.plugin_settings, Some(reply));
                    continue;
                }
                Wake::Request(ControlRequest::Ask { request, reply }) => {
                    if let Some(command) = request.command() {
                        let token = self.next_token;
                        self.next_token += 1;
                        let follow = matches!(request, Request::Send { wait: true, .. });
                        self.pending.insert(token, Client { reply, follow });
                        self.core.handle(Input::Command { token, command }, now);
                    } else {
                        // Only reads state, which is durable here (the last drain waited).
                        let answer = control_view(&request, self.core.state(), self.core.me())
                            .unwrap_or_else(|| {
                                Reply::error(ErrorKind::BadRequest, "not a request for this node")
                            });
                        let _ = reply.try_send(answer);
                        continue;
                    }
                }
                Wake::Timer => {
                    self.core.handle_timeout(now);
                    self.router.handle_timeout(now.instant);
                }
                Wake::Committed(result) => {
                    result.context("writing to the journal")?;
                    self.run_committed();
                    continue;
                }
                Wake::Stop(reason) => {
                    stop.take();
                    // Whatever was appended runs its replies and effects before the stop.
                    self.drain().await?;
                    self.watchers.stop(&reason);
                    return Ok(reason);
                }
            }
            self.commit().await?;
        }
    }

    /// Takes every output of the core's last mutation (the drive-loop rule): events are
    /// appended to the journal now, replies and effects wait in `collected` for `drain`.
    fn collect(&mut self) -> anyhow::Result<()> {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Event(stamped) => {
                    event_log::log(&stamped.event, self.core.state(), &self.core.me().id);
                    self.warn_of_pause(&stamped.event);
                    if let Some(id) = stamped.event.transfer()
                        && self.followers.follows(&id)
                    {
                        let state = self.core.state();
                        if let Some(t) = state.transfers.get(&id) {
                            let row = TransferRow::of(state, &id, t);
                            self.collected.changed.insert(id, row);
                        }
                    }
                    let needed_again = !self.watchers.is_empty()
                        || matches!(stamped.event, Event::PeerDiscovered { .. });
                    let entry = JournalEntry::Event(stamped);
                    let pending = self.journal.append(&entry)?;
                    let seq = pending.seq;
                    let first = self.collected.seqs.map_or(seq, |(first, _)| first);
                    self.collected.seqs = Some((first, seq));
                    if needed_again && let JournalEntry::Event(stamped) = entry {
                        self.collected.journaled.push((seq, stamped));
                    }
                    self.collected.last_pending = Some(pending);
                }
                other => self.collected.actions.push(other),
            }
        }
        Ok(())
    }

    /// A node that runs for years without a restart still starts in constant time: every
    /// [`COMPACT_AFTER_RECORDS`] records it writes a snapshot. Everything appended is in the
    /// core's state by now (the core applies an event before emitting it), as a snapshot needs.
    async fn compact_running(&mut self) {
        let (state, time_ms) = (self.core.state(), self.clock.wall_ms());
        let written = match self
            .journal
            .snapshot_stream(|| record::snapshot_parts(state, time_ms))
        {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match written {
            Ok(seq) => info!(seq, "compacted the journal into a snapshot"),
            Err(e) => warn!("could not compact the journal (the node runs on): {e:#}"),
        }
    }

    /// Feeds the core the inputs that are already waiting (at most [`MAX_INPUT_BATCH`]), so
    /// that their events share one journal commit (the `drain` that follows): with many
    /// transfers at once (a directory of small files), one fsync per input was the limit.
    /// Connection events still go first, as in `serve`. Nothing is carried out before the
    /// drain, so every effect still follows its events' commit.
    fn handle_ready_inputs(
        &mut self,
        inputs: &async_channel::Receiver<Input>,
        conns: &async_channel::Receiver<ConnEvent>,
    ) -> anyhow::Result<()> {
        self.collect()?;
        for _ in 1..MAX_INPUT_BATCH {
            while let Ok(event) = conns.try_recv() {
                self.on_conn(event);
            }
            let Ok(input) = inputs.try_recv() else {
                return Ok(());
            };
            let now = Now {
                instant: self.clock.now(),
                wall_ms: self.clock.wall_ms(),
            };
            self.core.handle(input, now);
            self.collect()?;
        }
        Ok(())
    }

    /// Takes what the core produced since the last commit as one batch: its events are
    /// appended now (they share the journal's group commit with whatever else is queued) and
    /// its replies and effects run once they are durable, after every earlier batch's. Does
    /// not wait for the fsync, unless [`MAX_COMMITS_IN_FLIGHT`] batches are committing already.
    async fn commit(&mut self) -> anyhow::Result<()> {
        self.collect()?;
        let Collected {
            last_pending,
            actions,
            journaled,
            seqs,
            changed,
        } = std::mem::take(&mut self.collected);
        if last_pending.is_none() && actions.is_empty() {
            return Ok(());
        }
        if let Some((first, last)) = seqs
            && first / COMPACT_AFTER_RECORDS != last / COMPACT_AFTER_RECORDS
        {
            // Queued behind this batch's events, which the core's state already holds.
            self.compact_running().await;
        }
        self.committing.push(Batch {
            pending: last_pending,
            work: Outputs {
                actions,
                journaled,
                last_seq: seqs.map(|(_, last)| last),
                changed,
            },
        });
        // A batch without events (replies, effects) waits only for the batches before it.
        self.run_committed();
        while self.committing.len() > MAX_COMMITS_IN_FLIGHT {
            if let Some(pending) = self.committing.oldest_pending() {
                pending.await.context("writing to the journal")?;
            }
            self.run_committed();
        }
        Ok(())
    }

    /// Commits what is collected and waits until every batch is durable and carried out.
    async fn drain(&mut self) -> anyhow::Result<()> {
        self.commit().await?;
        while !self.committing.is_empty() {
            if let Some(pending) = self.committing.oldest_pending() {
                pending.await.context("writing to the journal")?;
            }
            self.run_committed();
        }
        Ok(())
    }

    /// Carries out, oldest first, every batch whose events are durable (records become
    /// durable in order, so a batch's last ticket covers all of its events). A failed commit
    /// is left in place for the loop's `Committed` wake to report.
    fn run_committed(&mut self) {
        while let Some(outputs) = self.committing.pop_durable() {
            self.carry_out(outputs);
        }
    }

    /// Runs one durable batch's follow-ups, replies and effects, in order.
    fn carry_out(&mut self, outputs: Outputs) {
        let Outputs {
            actions,
            journaled,
            last_seq,
            changed,
        } = outputs;
        for (_, stamped) in &journaled {
            if let Event::PeerDiscovered { peer, .. } = &stamped.event
                && !peer.is_localsend()
            {
                let route = self.core.route(peer);
                self.route(
                    RouterInput::Seen {
                        peer: peer.clone(),
                        route,
                    },
                    self.now(),
                );
            }
        }
        self.followers.tell(&changed);
        self.watchers.tell(&journaled, last_seq);
        for action in actions {
            match action {
                Output::Outcome { token, outcome } => {
                    if let Some(client) = self.pending.remove(&token) {
                        let followed = match &outcome {
                            Outcome::Queued(ids) if client.follow => Some(ids.clone()),
                            _ => None,
                        };
                        let reply = control_reply(outcome, self.core.state(), &self.core.me().id);
                        if client.reply.try_send(reply).is_ok()
                            && let Some(ids) = followed
                        {
                            self.followers.add(&ids, self.core.state(), client.reply);
                        }
                    }
                }
                Output::Effect(Effect::TrustChanged) => self.write_trust_file(),
                Output::Effect(Effect::Dial { addr, token }) => {
                    runtime::spawn(signaling::dial(addr, None, token, self.reporter.clone()))
                        .detach();
                }
                Output::Effect(Effect::Signal { peer, message }) => {
                    let route = self.core.route(&peer);
                    let line = message.encode();
                    self.route(RouterInput::Send { peer, line, route }, self.now());
                }
                Output::Effect(Effect::PeerSeen { peer }) => {
                    let route = self.core.route(&peer);
                    self.route(RouterInput::Seen { peer, route }, self.now());
                }
                Output::Effect(Effect::CloseSignaling { conn }) => {
                    self.route(RouterInput::Close { conn }, self.now());
                }
                Output::Effect(Effect::Rtc { peer, action }) => {
                    self.rtc.act(&peer, self.local_names.map(&peer, action))
                }
                Output::Effect(Effect::AskPolicy(request)) => self.policy.ask(request),
                Output::Effect(Effect::ChannelSend { peer, data }) => {
                    if !self.rtc.send(&peer, data) {
                        debug!(%peer, "no open channel; transfer message dropped");
                    }
                }
                Output::Effect(Effect::Store { id, op }) => self.io.act(id, op),
                Output::Effect(Effect::HashSource { path, ids }) => self.io.hash_source(path, ids),
                Output::Effect(Effect::PrepareSend {
                    token,
                    paths,
                    peers,
                }) => {
                    let prepared = self.prepared.clone();
                    runtime::spawn(prepare_send(token, paths, peers, prepared)).detach();
                }
                Output::Effect(Effect::LocalSend(effect)) => {
                    if let Some(adapter) = &mut self.localsend {
                        adapter.act(effect);
                    }
                }
                Output::Event(_) => unreachable!("events were journaled above"),
            }
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: self.clock.now(),
            wall_ms: self.clock.wall_ms(),
        }
    }

    /// Feeds the router one input and carries out what it says.
    fn route(&mut self, input: RouterInput, now: Now) {
        self.router.handle_input(input, now.instant);
        while let Some(output) = self.router.poll_output() {
            match output {
                RouterOutput::Write { conn, line } => {
                    let Some(tx) = self.writers.get(&conn) else {
                        continue;
                    };
                    match tx.try_send(line) {
                        Ok(()) => {}
                        Err(async_channel::TrySendError::Full(_)) => {
                            // Debug, not a warning: a host that floods offers and never reads
                            // would otherwise flood the log (the negotiation retries anyway).
                            debug!(conn, "signaling connection not draining; message dropped");
                        }
                        Err(async_channel::TrySendError::Closed(_)) => {
                            // Its reader's `Down` is on the way; the core's retries resend.
                            debug!(conn, "signaling connection closed under a message");
                        }
                    }
                }
                RouterOutput::Dial { peer, addr } => {
                    runtime::spawn(signaling::dial(
                        addr,
                        Some(peer),
                        None,
                        self.reporter.clone(),
                    ))
                    .detach();
                }
                RouterOutput::Close { conn } => {
                    // Dropping the writer closes the connection gracefully.
                    self.writers.remove(&conn);
                }
                RouterOutput::Unreachable { peer, errors } => {
                    debug!(%peer, "no signaling connection: {}", errors.join("; "));
                    // Changes nothing journaled: what the core keeps is read when a
                    // negotiation with the peer fails.
                    self.core.handle(Input::Unreachable { peer, errors }, now);
                }
            }
        }
    }

    fn on_conn(&mut self, event: ConnEvent) {
        let now = self.now();
        match event {
            ConnEvent::Up {
                conn,
                from,
                hello,
                token,
                tx,
            } => {
                let peer = hello.id.clone();
                self.writers.insert(conn, tx);
                self.core.handle(
                    Input::Hello {
                        conn,
                        from,
                        hello,
                        token,
                    },
                    now,
                );
                self.route(RouterInput::Up { conn, peer, from }, now);
            }
            ConnEvent::Down { conn } => {
                self.writers.remove(&conn);
                self.core.handle(Input::ConnClosed { conn }, now);
                self.route(RouterInput::Down { conn }, now);
            }
            ConnEvent::DialFailed { peer, addr, error } => {
                self.route(RouterInput::DialFailed { peer, addr, error }, now);
            }
        }
    }

    /// A received transfer paused (the disk of the receive directory is full): one warning
    /// per cause, with the directory, until no received transfer is paused any more.
    fn warn_of_pause(&mut self, event: &Event) {
        let state = self.core.state();
        let receiving = |id: &TransferId| {
            state
                .transfers
                .get(id)
                .is_some_and(|t| t.direction == crate::core::Direction::Receive)
        };
        match event {
            Event::TransferPaused { id, reason } if receiving(id) => {
                let cause = reason.split(':').next().unwrap_or(reason).to_owned();
                if self.pause_warnings.insert(cause) {
                    warn!(
                        receive_dir = %self.receive_dir.display(),
                        %reason,
                        "receiving paused; it resumes by itself once there is room (`fsnode transfers` lists what waits)"
                    );
                }
            }
            Event::TransferAccepted { .. } | Event::TransferCancelled { .. }
                if !self.pause_warnings.is_empty() =>
            {
                let paused = state.transfers.values().any(|t| {
                    t.direction == crate::core::Direction::Receive
                        && t.status == crate::core::TransferStatus::Paused
                });
                if !paused {
                    self.pause_warnings.clear();
                }
            }
            _ => {}
        }
    }

    /// The human-readable projection of the trusted list (the journal is the source of truth).
    fn write_trust_file(&self) {
        let rows = crate::control::trusted_rows(self.core.state(), &self.core.me().id);
        let text = trust_file::render(rows.iter());
        if let Err(err) =
            atomic_file::write(&self.trust_file, text.as_bytes(), 0o600, Replace::Allowed)
        {
            warn!(file = %self.trust_file.display(), "cannot write the trusted-devices file: {err}");
        }
    }
}

/// Transfers queued per slice of a large `send`: the core journals and queues each slice
/// before the next is made, so memory holds a slice, never the whole directory's events.
const SEND_SLICE: usize = 1_000;

/// Collects and hashes the files of a `send` (blocking; on the worker pool), then hands the
/// core one queued transfer per file and peer, each with a fresh random id, in slices of
/// [`SEND_SLICE`] (the channel holds one: the next is made once the loop took it).
async fn prepare_send(
    token: Token,
    paths: Vec<PathBuf>,
    peers: Vec<DeviceId>,
    prepared: async_channel::Sender<Input>,
) {
    let files = match runtime::unblock(move || sources::collect(&paths)).await {
        Ok(files) => files,
        Err(e) => {
            let result = Err(format!("{e:#}"));
            let _ = prepared
                .send(Input::SendPrepared {
                    token,
                    result,
                    more: false,
                })
                .await;
            return;
        }
    };
    let per_slice = (SEND_SLICE / peers.len().max(1)).max(1);
    // Cut from the end into slices with allocations of their own, so that each slice's memory
    // goes once it is queued (100,000 files are ~25 MB here, and the state grows meanwhile).
    let mut first = files;
    let mut later = Vec::new();
    while first.len() > per_slice {
        let at = (first.len() - 1) / per_slice * per_slice;
        later.push(first.split_off(at));
    }
    first.shrink_to_fit();
    later.push(first);
    while let Some(slice) = later.pop() {
        let mut queued = Vec::with_capacity(slice.len() * peers.len());
        for file in slice {
            for peer in &peers {
                queued.push(QueuedFile {
                    id: TransferId(rand::random()),
                    peer: peer.clone(),
                    path: file.path.clone(),
                    name: file.name.clone(),
                    size: file.size,
                    mime: file.mime.clone(),
                    mode: file.mode,
                    mtime: file.mtime,
                    sha256: file.sha256,
                });
            }
        }
        let input = Input::SendPrepared {
            token,
            result: Ok(queued),
            more: !later.is_empty(),
        };
        if prepared.send(input).await.is_err() {
            return; // the node is stopping
        }
    }
}

/// What operators see on stderr without `-v`: failures as warnings, connection changes as
/// info; everything else at debug (the journal has it all).
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

/// Writes a snapshot of `state` (in parts when large), after which older segments are history
/// kept under the journal's retention.
pub fn compact(journal: &Journal<JournalEntry>, state: &State, time_ms: i64) -> anyhow::Result<()> {
    let seq = journal
        .snapshot_stream(|| record::snapshot_parts(state, time_ms))?
        .wait()?;
    info!(seq, "compacted the journal into a snapshot");
    Ok(())
}

async fn wait_for_stop_signal(mut signals: async_signal::Signals) -> anyhow::Result<String> {
    use async_signal::Signal;
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
pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
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
