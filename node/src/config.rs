//! A node's validated configuration: built-in defaults, overridden by the config file
//! (`CONFIG/fsnode.toml`), overridden by flags.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cli::{DeviceTypeArg, RunArgs};
use crate::core::DeviceType;
use crate::core::link::Congestion;
use crate::dirs::Dirs;

/// spec section 2: the `name` TXT value is at most 63 bytes.
pub const MAX_NAME_BYTES: usize = 63;

/// The signaling port (and the page's) when the operator names none: unassigned in IANA's
/// registry, the default of no common software we know of (development servers, databases,
/// Syncthing, KDE Connect, LocalSend), and below Linux's ephemeral range (32768-60999), so an
/// outgoing connection never holds it. The same port at every start keeps the page's URL and
/// `peers add HOST:PORT` valid across restarts; when it is taken, the node says so and serves
/// on a free port instead.
pub const DEFAULT_PORT: u16 = 7452;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub dirs: Dirs,
    pub name: String,
    pub device_type: DeviceType,
    /// The signaling port: [`DEFAULT_PORT`] unless the flag or the file names one (0: any).
    pub port: u16,
    /// Whether `port` is the default, which gives way to a free port when taken (a port the
    /// operator named does not: taken, it stops the node with [`crate::exit::PORT_IN_USE`]).
    pub port_is_default: bool,
    pub interfaces: Vec<String>,
    pub plugins: crate::policy::Settings,
    /// The journal's options (its history retention from `[journal]`).
    pub journal: fsnode_journal::Options,
    /// How links to other fsnode nodes run (`[link]`).
    pub link: LinkSettings,
    /// LocalSend, when turned on (`--localsend` / `localsend = true`).
    pub localsend: Option<LocalSendConfig>,
}

/// The `[link]` table, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSettings {
    /// Run QUIC with other fsnode nodes (spec 6); false keeps every session on the data channel.
    pub quic: bool,
    /// QUIC's congestion controller.
    pub congestion: Congestion,
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            quic: true,
            congestion: Congestion::default(),
        }
    }
}

/// The `[link]` table of the config file; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LinkFile {
    /// `false`: never offer QUIC, every session runs on the WebRTC data channel.
    pub quic: Option<bool>,
    /// `bbr`, `cubic` or `newreno`.
    pub congestion: Option<String>,
}

impl LinkFile {
    fn settings(&self) -> Result<LinkSettings, ConfigError> {
        let defaults = LinkSettings::default();
        let congestion = match self.congestion.as_deref().map(str::trim) {
            None => defaults.congestion,
            Some("bbr") => Congestion::Bbr,
            Some("cubic") => Congestion::Cubic,
            Some("newreno") => Congestion::NewReno,
            Some(other) => return Err(ConfigError::Congestion(other.to_owned())),
        };
        Ok(LinkSettings {
            quic: self.quic.unwrap_or(defaults.quic),
            congestion,
        })
    }
}

/// LocalSend's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSendConfig {
    pub port: u16,
    /// The PIN LocalSend senders must give, if any (`localsend-pin` in the config file only,
    /// so it never shows in the process list).
    pub pin: Option<String>,
}

/// History the journal keeps by default: a month, at most 256 MiB.
pub const DEFAULT_RETAIN_DAYS: u64 = 30;
pub const DEFAULT_RETAIN_MIB: u64 = 256;

/// The `[journal]` table of the config file; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JournalFile {
    /// Days of history (segments older than the newest snapshot) kept; 0 keeps none.
    pub retain_days: Option<u64>,
    /// MiB of history kept at most; 0 keeps none.
    pub retain_mib: Option<u64>,
}

impl JournalFile {
    /// The journal's options with this retention.
    pub fn options(&self) -> fsnode_journal::Options {
        let days = self.retain_days.unwrap_or(DEFAULT_RETAIN_DAYS);
        let mib = self.retain_mib.unwrap_or(DEFAULT_RETAIN_MIB);
        let max_bytes = if days == 0 {
            0
        } else {
            mib.saturating_mul(1024 * 1024)
        };
        fsnode_journal::Options {
            retention: fsnode_journal::Retention {
                max_bytes,
                max_age: Some(Duration::from_secs(days.saturating_mul(86_400))),
            },
            ..fsnode_journal::Options::default()
        }
    }
}

/// The `[plugins]` table of the config file; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginsFile {
    /// Where the `.wasm` plugins are (default: `DATA/plugins`).
    pub dir: Option<PathBuf>,
    /// Plugin names (file stems), in the order they are asked (default: every `.wasm`, by name).
    pub order: Option<Vec<String>>,
    /// Fuel per call.
    pub fuel: Option<u64>,
    /// Memory cap per plugin instance, MiB.
    pub memory_mib: Option<usize>,
    /// Wall-clock backstop per call, milliseconds.
    pub deadline_ms: Option<u64>,
    /// Configuration text per plugin name (else `NAME.toml` beside the `.wasm`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// The config file's contents; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub name: Option<String>,
    pub device_type: Option<String>,
    pub port: Option<u16>,
    #[serde(default)]
    pub interfaces: Vec<String>,
    pub receive_dir: Option<PathBuf>,
    #[serde(default)]
    pub plugins: PluginsFile,
    #[serde(default)]
    pub journal: JournalFile,
    #[serde(default)]
    pub link: LinkFile,
    /// Speak LocalSend too.
    #[serde(default)]
    pub localsend: bool,
    pub localsend_port: Option<u16>,
    pub localsend_pin: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the device name must not be empty")]
    EmptyName,
    #[error("device type {0:?} is not one of desktop, mobile, server")]
    DeviceType(String),
    #[error(
        "[link] congestion = {0:?} is not a congestion controller fsnode knows: use \"bbr\", \
         \"cubic\" or \"newreno\""
    )]
    Congestion(String),
    #[error("no network interface named {0:?} has an address (`ip addr` lists them)")]
    NoInterface(String),
    #[error("the interfaces {0:?} have no usable address (IPv6 link-local ones cannot be served)")]
    NoAddress(Vec<String>),
    #[error("the LocalSend port must not be 0")]
    LocalSendPort,
    #[error("the LocalSend PIN must be 1 to 64 printable characters")]
    LocalSendPin,
    #[error(transparent)]
    Dirs(#[from] crate::dirs::DirsError),
    /// Said in the message, not as a source: the hint comes last.
    #[error(
        "the receive directory {path} cannot be written ({error}); make it writable, or choose another with --receive-dir (or `receive-dir` in fsnode.toml)"
    )]
    ReceiveDir {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl ConfigFile {
    /// Reads the file if it exists; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: err.to_string(),
        })
    }
}

/// The directories for `--home` / `FSNODE_HOME` or the platform's.
pub fn resolve_dirs(home: Option<&Path>) -> Result<Dirs, ConfigError> {
    Ok(match home {
        Some(root) => Dirs::under(root),
        None => Dirs::platform()?,
    })
}

impl Config {
    pub fn resolve(home: Option<&Path>, args: &RunArgs) -> Result<Self, ConfigError> {
        let mut dirs = resolve_dirs(home)?;
        let file = ConfigFile::load(&dirs.config_file())?;
        if let Some(dir) = args.receive_dir.clone().or(file.receive_dir) {
            dirs.receive = dir;
        }
        let name = match args.name.clone().or(file.name) {
            Some(name) => name,
            None => host_name(),
        };
        let name = clamp_name(name.trim())?;
        let device_type = match (args.device_type, file.device_type) {
            (Some(arg), _) => match arg {
                DeviceTypeArg::Desktop => DeviceType::Desktop,
                DeviceTypeArg::Mobile => DeviceType::Mobile,
                DeviceTypeArg::Server => DeviceType::Server,
            },
            (None, Some(text)) => match DeviceType::from_wire(&text) {
                DeviceType::Unknown => return Err(ConfigError::DeviceType(text)),
                known => known,
            },
            (None, None) => DeviceType::Desktop,
        };
        let interfaces = if args.interfaces.is_empty() {
            file.interfaces
        } else {
            args.interfaces.clone()
        };
        let defaults = crate::policy::Limits::default();
        let plugins = crate::policy::Settings {
            dir: file
                .plugins
                .dir
                .clone()
                .unwrap_or_else(|| dirs.data.join("plugins")),
            order: file.plugins.order.clone(),
            config: file.plugins.config.clone(),
            limits: crate::policy::Limits {
                fuel: file.plugins.fuel.unwrap_or(defaults.fuel),
                memory_bytes: file
                    .plugins
                    .memory_mib
                    .map_or(defaults.memory_bytes, |mib| mib.saturating_mul(1024 * 1024)),
                deadline: file
                    .plugins
                    .deadline_ms
                    .map_or(defaults.deadline, Duration::from_millis),
            },
        };
        let mut link = file.link.settings()?;
        if args.no_quic {
            link.quic = false;
        }
        let chosen = args.port.or(file.port);
        let localsend = if args.localsend || file.localsend {
            let port = args
                .localsend_port
                .or(file.localsend_port)
                .unwrap_or(crate::core::localsend::DEFAULT_PORT);
            if port == 0 {
                return Err(ConfigError::LocalSendPort);
            }
            let pin = file.localsend_pin.clone();
            if pin.as_ref().is_some_and(|pin| {
                pin.is_empty() || pin.len() > 64 || pin.chars().any(|c| c.is_control())
            }) {
                return Err(ConfigError::LocalSendPin);
            }
            Some(LocalSendConfig { port, pin })
        } else {
            None
        };
        Ok(Self {
            localsend,
            plugins,
            link,
            journal: file.journal.options(),
            dirs,
            name,
            device_type,
            port: chosen.unwrap_or(DEFAULT_PORT),
            port_is_default: chosen.is_none(),
            interfaces,
        })
    }
}

fn host_name() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "fsnode".into()
    } else {
        name
    }
}

/// Shortens a name to 63 bytes on a character boundary.
fn clamp_name(name: &str) -> Result<String, ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::EmptyName);
    }
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Ok(name[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let home = tempfile::tempdir().unwrap();
        let dirs = Dirs::under(home.path());
        fs::create_dir_all(&dirs.config).unwrap();
        fs::write(
            dirs.config_file(),
            "name = \"from-file\"\ndevice-type = \"server\"\nport = 7000\ninterfaces = [\"veth0\"]\n",
        )
        .unwrap();
        let from_file = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap();
        assert_eq!(from_file.name, "from-file");
        assert_eq!(from_file.device_type, DeviceType::Server);
        assert_eq!(from_file.port, 7000);
        assert_eq!(from_file.interfaces, vec!["veth0"]);
        let args = RunArgs {
            name: Some("flag".into()),
            device_type: Some(DeviceTypeArg::Mobile),
            port: Some(0),
            interfaces: vec!["veth1".into()],
            receive_dir: Some("/srv/in".into()),
            no_quic: false,
            localsend: false,
            localsend_port: None,
        };
        let from_flags = Config::resolve(Some(home.path()), &args).unwrap();
        assert_eq!(from_flags.name, "flag");
        assert_eq!(from_flags.device_type, DeviceType::Mobile);
        assert_eq!(from_flags.port, 0);
        assert!(!from_flags.port_is_default);
        assert_eq!(from_flags.interfaces, vec!["veth1"]);
        let home = tempfile::tempdir().unwrap();
        let defaults = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap();
        assert_eq!(defaults.port, DEFAULT_PORT);
        assert!(defaults.port_is_default);
        assert_eq!(from_flags.dirs.receive, Path::new("/srv/in"));
        assert_eq!(from_flags.localsend, None, "LocalSend is off by default");
    }

    #[test]
    fn localsend_is_one_switch_with_its_own_port_and_an_optional_pin() {
        let home = tempfile::tempdir().unwrap();
        let config_dir = home.path().join("config");
        fs::create_dir_all(&config_dir).unwrap();
        let flag = RunArgs {
            localsend: true,
            ..RunArgs::default()
        };
        let on = Config::resolve(Some(home.path()), &flag).unwrap();
        assert_eq!(
            on.localsend,
            Some(LocalSendConfig {
                port: crate::core::localsend::DEFAULT_PORT,
                pin: None
            })
        );
        fs::write(
            config_dir.join("fsnode.toml"),
            "localsend = true\nlocalsend-port = 53400\nlocalsend-pin = \"4711\"\n",
        )
        .unwrap();
        let from_file = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap();
        assert_eq!(
            from_file.localsend,
            Some(LocalSendConfig {
                port: 53400,
                pin: Some("4711".into())
            })
        );
        fs::write(
            config_dir.join("fsnode.toml"),
            "localsend = true\nlocalsend-port = 0\n",
        )
        .unwrap();
        assert!(Config::resolve(Some(home.path()), &RunArgs::default()).is_err());
    }

    #[test]
    fn the_plugins_table_sets_directory_order_limits_and_config() {
        let home = tempfile::tempdir().unwrap();
        let dirs = Dirs::under(home.path());
        let defaults = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap();
        assert_eq!(defaults.plugins.dir, dirs.data.join("plugins"));
        assert_eq!(defaults.plugins.order, None);
        assert_eq!(defaults.plugins.limits, crate::policy::Limits::default());
        fs::create_dir_all(&dirs.config).unwrap();
        fs::write(
            dirs.config_file(),
            "[plugins]\ndir = \"/srv/plugins\"\norder = [\"allowlist\", \"trust-on-offer\"]\n\
             fuel = 5000\nmemory-mib = 2\ndeadline-ms = 30\n\
             [plugins.config]\nallowlist = \"names = ['a*']\"\n",
        )
        .unwrap();
        let config = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap();
        let plugins = &config.plugins;
        assert_eq!(plugins.dir, Path::new("/srv/plugins"));
        assert_eq!(
            plugins.plugins(),
            [
                (
                    "allowlist".into(),
                    PathBuf::from("/srv/plugins/allowlist.wasm")
                ),
                (
                    "trust-on-offer".into(),
                    PathBuf::from("/srv/plugins/trust-on-offer.wasm")
                ),
            ]
        );
        assert_eq!(plugins.limits.fuel, 5000);
        assert_eq!(plugins.limits.memory_bytes, 2 * 1024 * 1024);
        assert_eq!(plugins.limits.deadline, Duration::from_millis(30));
        assert_eq!(plugins.config_for("allowlist"), "names = ['a*']");
        assert_eq!(plugins.config_for("trust-on-offer"), "");
    }

    #[test]
    fn a_bad_config_file_names_itself() {
        let home = tempfile::tempdir().unwrap();
        let dirs = Dirs::under(home.path());
        fs::create_dir_all(&dirs.config).unwrap();
        fs::write(dirs.config_file(), "colour = \"blue\"\n").unwrap();
        let err = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap_err();
        assert!(err.to_string().contains("fsnode.toml"), "{err}");
        fs::write(dirs.config_file(), "device-type = \"toaster\"\n").unwrap();
        assert!(matches!(
            Config::resolve(Some(home.path()), &RunArgs::default()),
            Err(ConfigError::DeviceType(_))
        ));
    }

    #[test]
    fn the_journal_table_sets_the_history_retention() {
        let home = tempfile::tempdir().unwrap();
        let dirs = Dirs::under(home.path());
        fs::create_dir_all(&dirs.config).unwrap();
        let default = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap();
        assert_eq!(
            default.journal.retention,
            fsnode_journal::Retention {
                max_bytes: DEFAULT_RETAIN_MIB * 1024 * 1024,
                max_age: Some(Duration::from_secs(DEFAULT_RETAIN_DAYS * 86_400)),
            }
        );
        fs::write(
            dirs.config_file(),
            "[journal]\nretain-days = 7\nretain-mib = 64\n",
        )
        .unwrap();
        let set = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap();
        assert_eq!(set.journal.retention.max_bytes, 64 * 1024 * 1024);
        assert_eq!(
            set.journal.retention.max_age,
            Some(Duration::from_secs(7 * 86_400))
        );
        fs::write(dirs.config_file(), "[journal]\nretain-days = 0\n").unwrap();
        let none = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap();
        assert_eq!(
            none.journal.retention.max_bytes, 0,
            "0 days keeps no history"
        );
        fs::write(dirs.config_file(), "[journal]\nkeep = 1\n").unwrap();
        assert!(Config::resolve(Some(home.path()), &RunArgs::default()).is_err());
    }

    #[test]
    fn the_link_table_turns_quic_off_and_picks_the_congestion_controller() {
        let home = tempfile::tempdir().unwrap();
        let dirs = Dirs::under(home.path());
        fs::create_dir_all(&dirs.config).unwrap();
        let default = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap();
        assert_eq!(default.link, LinkSettings::default());
        assert!(default.link.quic);
        fs::write(
            dirs.config_file(),
            "[link]\nquic = false\ncongestion = \"cubic\"\n",
        )
        .unwrap();
        let set = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap();
        assert_eq!(
            set.link,
            LinkSettings {
                quic: false,
                congestion: Congestion::Cubic
            }
        );
        fs::write(dirs.config_file(), "[link]\ncongestion = \"newreno\"\n").unwrap();
        let newreno = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap();
        assert_eq!(newreno.link.congestion, Congestion::NewReno);
        // The flag turns QUIC off whatever the file says.
        let flag = RunArgs {
            no_quic: true,
            ..RunArgs::default()
        };
        assert!(!Config::resolve(Some(home.path()), &flag).unwrap().link.quic);
        // A controller fsnode does not know is a clear configuration error (exit code 6).
        fs::write(dirs.config_file(), "[link]\ncongestion = \"vegas\"\n").unwrap();
        let err = Config::resolve(Some(home.path()), &RunArgs::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Congestion(ref v) if v == "vegas"));
        assert!(
            err.to_string()
                .contains("\"bbr\", \"cubic\" or \"newreno\""),
            "{err}"
        );
        assert_eq!(
            crate::exit::code_for(&anyhow::Error::from(err)),
            crate::exit::CONFIG
        );
        fs::write(dirs.config_file(), "[link]\nquic = \"yes\"\n").unwrap();
        assert!(matches!(
            Config::resolve(Some(home.path()), &RunArgs::default()),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn names_are_clamped_to_63_bytes_on_a_character_boundary() {
        let long = "é".repeat(40); // 80 bytes
        let clamped = clamp_name(&long).unwrap();
        assert!(clamped.len() <= MAX_NAME_BYTES);
        assert_eq!(clamped, "é".repeat(31));
        assert!(matches!(clamp_name(""), Err(ConfigError::EmptyName)));
    }
}
