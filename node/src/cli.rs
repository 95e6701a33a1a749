//! Command-line syntax (clap). Parsed flags are turned into a validated `Config` by
//! `config.rs` before anything runs (ripgrep's two stages).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "fsnode",
    version,
    about = "Peer-to-peer file transfer on a local network",
    long_about = "fsnode finds other fsnode nodes on the LAN with mDNS, lets you choose which \
                  devices to trust, and moves files between trusted devices over WebRTC data \
                  channels in SHA-256-verified chunks that survive disconnects and restarts.\n\n\
                  Start the node with `fsnode run`; the other commands talk to it or read its \
                  journal.",
    propagate_version = true
)]
pub struct Cli {
    /// Put config, data, runtime and receive directories under this one root.
    #[arg(long, global = true, env = "FSNODE_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// More log output on stderr (-v: debug, -vv: trace). Logs are quiet by default.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node in the foreground until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Print this node's device id, name, type, port and page URL with a QR code for phones
    /// (the running node's; creates the identity if there is none).
    Id(IdArgs),
    /// Read the node's journal: every event it recorded, verification, state at any point.
    Journal(JournalArgs),
    /// List the devices this node knows, or dial one directly (needs a running node).
    Peers(PeersArgs),
    /// Trust or stop trusting devices; list trusted devices and those asking to connect.
    Trust(TrustArgs),
    /// Send files or directories to one or more trusted devices (queued while they are offline).
    Send(SendArgs),
    /// Cancel a transfer (its id, or a unique prefix of it), from either side.
    Cancel(CancelArgs),
    /// Active and recently finished transfers: state, progress, rate and peer. `--all` and
    /// `--since` read older finished ones from the journal's history, newest first, paged.
    Transfers(TransfersArgs),
    /// Follow the node's events live (discovery, trust, connections, transfers) until Ctrl-C.
    Watch(JsonArg),
    /// Policy plugins: list the loaded ones, check a plugin offline, build one from source.
    Plugins(PluginsArgs),
}

#[derive(Debug, Args)]
pub struct PluginsArgs {
    #[command(subcommand)]
    pub command: PluginsCommand,
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// The plugins in the order they are asked, and the disabled ones with why (from the
    /// running node; without one, the configured order).
    List {
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Make the running node load the plugins of its plugin directory again (it also does so
    /// by itself within seconds of a change there) and print what it loaded.
    Reload {
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Load a plugin offline, ask it every question with sample facts, and print its answers
    /// and what each call cost.
    Check {
        /// The plugin component to load (a `.wasm` file).
        #[arg(value_name = "FILE.wasm")]
        file: PathBuf,
        /// Configuration text handed to the plugin (default: NAME.toml beside it, if any).
        #[arg(long, value_name = "TEXT")]
        config: Option<String>,
    },
    /// Build a Rust plugin crate (or workspace) for wasm32-unknown-unknown and write its
    /// components into the plugin directory (or --out).
    Build {
        /// The crate's directory (holding Cargo.toml).
        #[arg(value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Where the components go (default: the node's plugin directory).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Files or directories to send (a directory sends its files with relative names).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<std::path::PathBuf>,
    /// The receiving device: its id or a unique prefix (repeatable: one to many).
    #[arg(long = "to", required = true, value_name = "ID|PREFIX")]
    pub to: Vec<String>,
    /// Stay and show progress until every transfer has finished (exit code 7 if any failed).
    #[arg(long)]
    pub wait: bool,
    /// Print JSON (with --wait: one progress object per line).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The transfer: its id as `fsnode transfers` lists it, or a unique prefix of it.
    #[arg(value_name = "TRANSFER")]
    pub transfer: String,
    /// Print JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Default)]
pub struct TransfersArgs {
    /// Print JSON (for scripts).
    #[arg(long)]
    pub json: bool,
    /// Every finished transfer the journal's history holds (works without a running node).
    #[arg(long)]
    pub all: bool,
    /// Finished transfers of the last DURATION (e.g. `2h`, `7days`) from the journal's history.
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<std::time::Duration>,
    /// With --all/--since: how many to show (a page).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// With --all/--since: how many of the newest to skip (the next page: --skip 50).
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON (for scripts): one object, or one per line for streams.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PeersArgs {
    /// Print JSON (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<PeersCommand>,
}

#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Dial a node at HOST:PORT directly (when multicast is blocked); its identity comes from
    /// its hello, and is proven by DTLS when it connects.
    Add {
        /// The other node's address (or name) and signaling port, e.g. 192.168.1.20:7452 (its
        /// `fsnode id` prints the port).
        #[arg(value_name = "HOST:PORT")]
        address: String,
    },
}

#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Print JSON (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: TrustCommand,
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust a device: its full id or a unique prefix of at least 8 characters.
    Add {
        /// The device: its full 52-character id (`fsnode peers` or the other side's `fsnode
        /// id` shows it), or a unique prefix of at least 8 characters of a device this node
        /// has seen.
        #[arg(value_name = "ID|PREFIX")]
        device: String,
    },
    /// Stop trusting a device (its connection closes; queued transfers wait).
    Remove {
        /// The trusted device: its id or a unique prefix of at least 8 characters.
        #[arg(value_name = "ID|PREFIX")]
        device: String,
    },
    /// Trusted devices, and the devices that asked to connect.
    List,
}

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Human-readable device name announced to peers (default: the host name; ≤ 63 bytes).
    #[arg(long)]
    pub name: Option<String>,

    /// Device type announced to peers.
    #[arg(long, value_enum)]
    pub device_type: Option<DeviceTypeArg>,

    /// TCP port for signaling and the node's page [default: 7452, or a free port when 7452 is
    /// taken]. A port given here (or in the config file) must be free; 0 picks a free one.
    #[arg(long)]
    pub port: Option<u16>,

    /// Serve discovery (mDNS), signaling and the page (TCP), and ICE only on this network
    /// interface (repeatable). Default: every interface that is up, except loopback.
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,

    /// Where received files land (default: the user's download directory).
    #[arg(long, value_name = "DIR")]
    pub receive_dir: Option<PathBuf>,

    /// Never offer QUIC (spec 6): every session, also with other fsnode nodes, runs on the
    /// WebRTC data channel (as `[link] quic = false` in fsnode.toml).
    #[arg(long)]
    pub no_quic: bool,

    /// Also speak LocalSend (protocol v2.1): multicast discovery and HTTPS on its own port,
    /// under this node's trust list (off by default).
    #[arg(long)]
    pub localsend: bool,

    /// LocalSend's port, for HTTPS and multicast (default 53317).
    #[arg(long, value_name = "PORT")]
    pub localsend_port: Option<u16>,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Print JSON (for scripts): device_id, name, device_type, running, port, urls,
    /// identity_file.
    #[arg(long)]
    pub json: bool,
    /// Print the page's QR code even when stdout is not a terminal (it is printed on one).
    #[arg(long)]
    pub qr: bool,
}

#[derive(Debug, Args)]
pub struct JournalArgs {
    /// Read this journal directory instead of the node's own (e.g. a copy from another machine).
    #[arg(long, global = true, value_name = "DIR")]
    pub journal: Option<PathBuf>,

    #[command(subcommand)]
    pub command: JournalCommand,
}

#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Print the journal's records, oldest first.
    Show {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Start at this sequence number.
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
    },
    /// Check every record's checksum and sequence; exit non-zero if the journal is damaged.
    Verify,
    /// Cut a damaged journal at its first damaged record so the node can start again. Says
    /// first how many records it keeps and how many it cuts, and asks (or --yes); what it cuts
    /// is moved into a directory beside the journal, never deleted. Stop the node first.
    Repair {
        /// Do not ask for confirmation (for scripts).
        #[arg(long)]
        yes: bool,
        /// Where to move what is cut (default: `journal.cut-TIME` beside the journal; it must
        /// be on the same file system).
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Rebuild the node's state (peers, trust, transfers and their progress) from the journal,
    /// optionally only up to a sequence number: what the node believed at that point.
    Replay {
        /// Stop after the record with this sequence number.
        #[arg(long, value_name = "SEQ")]
        until: Option<u64>,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DeviceTypeArg {
    Desktop,
    Mobile,
    Server,
}

/// `--since DURATION`, with an error that shows what a duration looks like.
fn parse_since(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|err| {
        format!("{text:?} is not a duration ({err}); write a number and a unit, e.g. 90s, 2h, 7days or 1week")
    })
}
