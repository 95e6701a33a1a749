//! The policy plugin host: runs wasm components that export `fsnode:policy/decide` (see
//! `plugin-api/wit/`) with wasmtime, and answers the core's [`Policy`] questions with them.
//!
//! Plugins are asked in the configured order; the first answer that is not "no opinion"
//! decides. A plugin imports nothing (the linker offers no WASI, so a component that imports
//! anything fails to load). Each call runs under a fuel budget (deterministic CPU limit), an
//! epoch deadline (a wall-clock backstop ticked by a thread of this host) and the instance's
//! memory cap. A plugin that fails to load, traps, exceeds a limit or answers nonsense is
//! disabled for the life of the node and reported through [`Policy::take_disabled`], which the
//! core journals as `PluginDisabled`. Instances are created once and reused across calls.

pub mod bindings;
pub mod build;
mod plugin;
pub mod samples;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{info, warn};

use crate::control::PluginRow;
use crate::core::policy::{
    AcceptAnswer, Decided, Disabled, FileFacts, NodeFacts, PeerFacts, Policy, QueuedFacts,
    TrustAnswer,
};
use crate::core::{DeviceId, TransferId};

pub use plugin::{Call, Plugin};

/// How often the epoch ticker advances the engine's epoch.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The budgets every plugin runs under (README, "Limits").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Fuel per call (about one unit per wasm instruction).
    pub fuel: u64,
    /// Largest linear memory of an instance, bytes.
    pub memory_bytes: usize,
    /// Wall-clock backstop per call; a call still running then is interrupted.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 10_000_000,
            memory_bytes: 16 * 1024 * 1024,
            deadline: Duration::from_millis(100),
        }
    }
}

impl Limits {
    /// The epoch deadline in ticks (at least one).
    fn deadline_ticks(&self) -> u64 {
        (self.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// Why a plugin could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a valid component: {0}")]
    Compile(String),
    #[error("exports no contract version this node knows (it knows {known}); exports: {found}")]
    NoKnownVersion { known: String, found: String },
    #[error("cannot be instantiated (a plugin may import nothing): {0}")]
    Instantiate(String),
    #[error("rejected its configuration: {0}")]
    Configure(String),
    #[error("ran out of fuel ({fuel} per call)")]
    OutOfFuel { fuel: u64 },
    #[error("ran past the wall-clock deadline ({0:?})")]
    Deadline(Duration),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("answered nonsense to {question}: {detail}")]
    Nonsense {
        question: &'static str,
        detail: String,
    },
}

/// What a node runs plugins with: the engine (fuel and epochs on) and its epoch ticker.
pub struct Runtime {
    engine: wasmtime::Engine,
    limits: Limits,
    stop_ticker: Arc<AtomicBool>,
}

impl Runtime {
    pub fn new(limits: Limits) -> Result<Self, PluginError> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.consume_fuel(true);
        config.epoch_interruption(true);
        let engine =
            wasmtime::Engine::new(&config).map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("fsnode-plugin-epoch".into())
            .spawn(move || {
                let (engine, stop) = ticker;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Compile(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            engine,
            limits,
            stop_ticker,
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Compiles, links, instantiates and configures one plugin.
    pub fn load(&self, name: &str, path: &Path, config: &str) -> Result<Plugin, PluginError> {
        Plugin::load(&self.engine, self.limits, name, path, config)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Where plugins come from and how they run (fsnode.toml `[plugins]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub dir: PathBuf,
    /// Plugin names (file stems) in the order they are asked; `None`: every `.wasm` in `dir`,
    /// by name.
    pub order: Option<Vec<String>>,
    /// Configuration text per plugin (else `NAME.toml` beside the `.wasm`, else empty).
    pub config: BTreeMap<String, String>,
    pub limits: Limits,
}

impl Settings {
    /// The plugins to load, in order: (name, path).
    pub fn plugins(&self) -> Vec<(String, PathBuf)> {
        match &self.order {
            Some(order) => order
                .iter()
                .map(|name| (name.clone(), self.dir.join(format!("{name}.wasm"))))
                .collect(),
            None => {
                let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(&self.dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.extension().is_some_and(|e| e == "wasm"))
                    .filter_map(|path| {
                        let name = path.file_stem()?.to_str()?.to_owned();
                        Some((name, path))
                    })
                    .collect();
                found.sort();
                found
            }
        }
    }

    /// A plugin's configuration text.
    pub fn config_for(&self, name: &str) -> String {
        self.config.get(name).cloned().unwrap_or_else(|| {
            std::fs::read_to_string(self.dir.join(format!("{name}.toml"))).unwrap_or_default()
        })
    }
}

/// One entry of the order: a loaded plugin, or why it is not in use.
struct Slot {
    name: String,
    path: PathBuf,
    version: Option<&'static str>,
    plugin: Option<Plugin>,
    disabled: Option<String>,
    calls: u64,
    fuel: u64,
}

/// The plugins of a node, in order, as the core's [`Policy`].
pub struct PluginHost {
    // Kept for the ticker thread's lifetime; none without plugins (no thread ticking idly).
    _runtime: Option<Runtime>,
    slots: Vec<Slot>,
    disabled: Vec<Disabled>,
}

impl PluginHost {
    /// Loads every configured plugin; those that fail are listed as disabled (and reported to
    /// the core) rather than stopping the node.
    pub fn load(settings: &Settings) -> Result<Self, PluginError> {
        let plugins = settings.plugins();
        let mut slots = Vec::new();
        let mut disabled = Vec::new();
        if plugins.is_empty() {
            return Ok(Self {
                _runtime: None,
                slots,
                disabled,
            });
        }
        let runtime = Runtime::new(settings.limits)?;
        for (name, path) in plugins {
            let config = settings.config_for(&name);
            let mut slot = Slot {
                name: name.clone(),
                path: path.clone(),
                version: None,
                plugin: None,
                disabled: None,
                calls: 0,
                fuel: 0,
            };
            match runtime.load(&name, &path, &config) {
                Ok(plugin) => {
                    info!(plugin = %name, version = plugin.version(), "loaded policy plugin");
                    slot.version = Some(plugin.version());
                    slot.plugin = Some(plugin);
                }
                Err(err) => {
                    warn!(plugin = %name, "policy plugin disabled: {err}");
                    slot.disabled = Some(err.to_string());
                    disabled.push(Disabled {
                        plugin: name,
                        reason: err.to_string(),
                    });
                }
            }
            slots.push(slot);
        }
        Ok(Self {
            _runtime: Some(runtime),
            slots,
            disabled,
        })
    }

    /// Asks each plugin in order until one answers; disables those that fail.
    fn first<T>(
        &mut self,
        mut ask: impl FnMut(&mut Plugin) -> Result<Call<Option<T>>, PluginError>,
    ) -> Option<Decided<T>> {
        for slot in &mut self.slots {
            let Some(plugin) = slot.plugin.as_mut() else {
                continue;
            };
            slot.calls += 1;
            match ask(plugin) {
                Ok(call) => {
                    slot.fuel += call.fuel;
                    if let Some(answer) = call.value {
                        return Some(Decided {
                            plugin: slot.name.clone(),
                            answer,
                        });
                    }
                }
                Err(err) => {
                    warn!(plugin = %slot.name, "policy plugin disabled: {err}");
                    // Dropping the instance frees its memory; the node goes on without it.
                    slot.plugin = None;
                    slot.disabled = Some(err.to_string());
                    self.disabled.push(Disabled {
                        plugin: slot.name.clone(),
                        reason: err.to_string(),
                    });
                }
            }
        }
        None
    }
}

impl Policy for PluginHost {
    fn on_discovered(
        &mut self,
        node: &NodeFacts,
        peer: &PeerFacts,
    ) -> Option<Decided<TrustAnswer>> {
        self.first(|p| p.on_discovered(node, peer))
    }

    fn on_offer(&mut self, node: &NodeFacts, peer: &PeerFacts) -> Option<Decided<TrustAnswer>> {
        self.first(|p| p.on_offer(node, peer))
    }

    fn on_transfer(
        &mut self,
        node: &NodeFacts,
        peer: &PeerFacts,
        file: &FileFacts,
    ) -> Option<Decided<AcceptAnswer>> {
        self.first(|p| p.on_transfer(node, peer, file))
    }

    fn schedule(
        &mut self,
        node: &NodeFacts,
        queue: &[QueuedFacts],
        connected: &[DeviceId],
    ) -> Option<Decided<Vec<TransferId>>> {
        self.first(|p| p.schedule(node, queue, connected))
    }

    fn map_mode(&mut self, node: &NodeFacts, file: &FileFacts) -> Option<Decided<u32>> {
        self.first(|p| p.map_mode(node, file))
    }

    fn take_disabled(&mut self) -> Vec<Disabled> {
        std::mem::take(&mut self.disabled)
    }

    fn describe(&self) -> Vec<PluginRow> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, slot)| PluginRow {
                order: i + 1,
                name: slot.name.clone(),
                path: slot.path.display().to_string(),
                version: slot.version.map(str::to_owned),
                disabled: slot.disabled.clone(),
                calls: slot.calls,
                fuel: slot.fuel,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
