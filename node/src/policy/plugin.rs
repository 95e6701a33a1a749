//! One loaded plugin: its store (fuel, epoch deadline, memory cap), its instance (reused for
//! every call) and the checks its answers must pass before the core sees them.

use std::path::Path;
use std::str::FromStr;

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

use super::bindings::{self, v0_1_0};
use super::{Limits, PluginError};
use crate::core::policy::{
    AcceptAnswer, FileFacts, NodeFacts, PeerFacts, Platform, QueuedFacts, TrustAnswer,
};
use crate::core::{DeviceId, DeviceType, TransferId, names};

use v0_1_0::exports::fsnode::policy::decide as v1;

/// Longest `reject` reason a plugin may give (it goes to the sender on the wire).
pub const MAX_REASON_BYTES: usize = 200;

/// A call's result and the fuel it burnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call<T> {
    pub value: T,
    pub fuel: u64,
}

struct Ctx {
    limits: StoreLimits,
}

/// The bindings of the contract version the component exports.
enum Bindings {
    V0_1_0(v0_1_0::Policy),
}

pub struct Plugin {
    name: String,
    version: &'static str,
    limits: Limits,
    store: Store<Ctx>,
    bindings: Bindings,
}

impl Plugin {
    pub(super) fn load(
        engine: &Engine,
        limits: Limits,
        name: &str,
        path: &Path,
        config: &str,
    ) -> Result<Self, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let component =
            Component::new(engine, &bytes).map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
        let Some(version) = bindings::detect(exports.iter().map(String::as_str)) else {
            return Err(PluginError::NoKnownVersion {
                known: bindings::KNOWN
                    .iter()
                    .map(|(v, _)| *v)
                    .collect::<Vec<_>>()
                    .join(", "),
                found: exports.join(", "),
            });
        };
        // Nothing is defined in the linker: a component importing anything (WASI included)
        // fails here.
        let linker = Linker::new(engine);
        let mut store = Store::new(
            engine,
            Ctx {
                limits: StoreLimitsBuilder::new()
                    .memory_size(limits.memory_bytes)
                    .trap_on_grow_failure(true)
                    .build(),
            },
        );
        store.limiter(|ctx| &mut ctx.limits);
        store.epoch_deadline_trap();
        // Instantiation runs the component's start code: it gets a call's budget too.
        arm(&mut store, limits)?;
        let instance = match version {
            "0.1.0" => {
                v0_1_0::Policy::instantiate(&mut store, &component, &linker).map(Bindings::V0_1_0)
            }
            other => unreachable_version(other),
        }
        .map_err(|e| match classify(e, limits) {
            PluginError::Trap(message) => PluginError::Instantiate(message),
            other => other,
        })?;
        let mut plugin = Self {
            name: name.to_owned(),
            version,
            limits,
            store,
            bindings: instance,
        };
        plugin
            .call(|store, b| match b {
                Bindings::V0_1_0(b) => b.fsnode_policy_decide().call_configure(store, config),
            })?
            .value
            .map_err(PluginError::Configure)?;
        Ok(plugin)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The contract version the plugin exports.
    pub fn version(&self) -> &'static str {
        self.version
    }

    /// Runs one export under a fresh fuel budget and epoch deadline.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Store<Ctx>, &Bindings) -> wasmtime::Result<T>,
    ) -> Result<Call<T>, PluginError> {
        arm(&mut self.store, self.limits)?;
        let result = f(&mut self.store, &self.bindings);
        let left = self.store.get_fuel().unwrap_or(0);
        let fuel = self.limits.fuel.saturating_sub(left);
        match result {
            Ok(value) => Ok(Call { value, fuel }),
            Err(err) => Err(classify(err, self.limits)),
        }
    }

    pub fn on_discovered(
        &mut self,
        node: &NodeFacts,
        peer: &PeerFacts,
    ) -> Result<Call<Option<TrustAnswer>>, PluginError> {
        let (node, peer) = (node_v1(node), peer_v1(peer));
        let call = self.call(|store, b| match b {
            Bindings::V0_1_0(b) => b
                .fsnode_policy_decide()
                .call_on_discovered(store, &node, &peer),
        })?;
        Ok(map(call, |d| d.map(trust)))
    }

    pub fn on_offer(
        &mut self,
        node: &NodeFacts,
        peer: &PeerFacts,
    ) -> Result<Call<Option<TrustAnswer>>, PluginError> {
        let (node, peer) = (node_v1(node), peer_v1(peer));
        let call = self.call(|store, b| match b {
            Bindings::V0_1_0(b) => b.fsnode_policy_decide().call_on_offer(store, &node, &peer),
        })?;
        Ok(map(call, |d| d.map(trust)))
    }

    pub fn on_transfer(
        &mut self,
        node: &NodeFacts,
        peer: &PeerFacts,
        file: &FileFacts,
    ) -> Result<Call<Option<AcceptAnswer>>, PluginError> {
        let (node, peer, file) = (node_v1(node), peer_v1(peer), file_v1(file));
        let call = self.call(|store, b| match b {
            Bindings::V0_1_0(b) => b
                .fsnode_policy_decide()
                .call_on_transfer(store, &node, &peer, &file),
        })?;
        let answer = match call.value {
            None => None,
            Some(v1::AcceptDecision::Accept(None)) => Some(AcceptAnswer::Accept { dir: None }),
            Some(v1::AcceptDecision::Accept(Some(dir))) => {
                // A subdirectory obeys the rules of a received name (no `..`, no absolute
                // path, no NUL or backslash, bounded lengths).
                names::check_name(&dir).map_err(|err| PluginError::Nonsense {
                    question: "on-transfer",
                    detail: format!("subdirectory {dir:?}: {err}"),
                })?;
                Some(AcceptAnswer::Accept { dir: Some(dir) })
            }
            Some(v1::AcceptDecision::Reject(reason)) => {
                if reason.is_empty()
                    || reason.len() > MAX_REASON_BYTES
                    || reason.chars().any(char::is_control)
                {
                    return Err(PluginError::Nonsense {
                        question: "on-transfer",
                        detail: format!(
                            "a reject reason must be 1 to {MAX_REASON_BYTES} bytes of printable text"
                        ),
                    });
                }
                Some(AcceptAnswer::Reject { reason })
            }
        };
        Ok(Call {
            value: answer,
            fuel: call.fuel,
        })
    }

    pub fn schedule(
        &mut self,
        node: &NodeFacts,
        queue: &[QueuedFacts],
        connected: &[DeviceId],
    ) -> Result<Call<Option<Vec<TransferId>>>, PluginError> {
        let node = node_v1(node);
        let facts: Vec<v1::Queued> = queue.iter().map(queued_v1).collect();
        let connected: Vec<String> = connected.iter().map(ToString::to_string).collect();
        let call = self.call(|store, b| match b {
            Bindings::V0_1_0(b) => b
                .fsnode_policy_decide()
                .call_schedule(store, &node, &facts, &connected),
        })?;
        let Some(order) = call.value else {
            return Ok(Call {
                value: None,
                fuel: call.fuel,
            });
        };
        let nonsense = |detail: String| PluginError::Nonsense {
            question: "schedule",
            detail,
        };
        let mut ids = Vec::with_capacity(order.len());
        for text in order {
            let id = TransferId::from_str(&text)
                .ok()
                .filter(|id| queue.iter().any(|q| q.id == *id))
                .ok_or_else(|| nonsense(format!("{text:?} is not a queued transfer")))?;
            if ids.contains(&id) {
                return Err(nonsense(format!("{text:?} is listed twice")));
            }
            ids.push(id);
        }
        Ok(Call {
            value: Some(ids),
            fuel: call.fuel,
        })
    }

    pub fn map_mode(
        &mut self,
        node: &NodeFacts,
        file: &FileFacts,
    ) -> Result<Call<Option<u32>>, PluginError> {
        let (node, file) = (node_v1(node), file_v1(file));
        let call = self.call(|store, b| match b {
            Bindings::V0_1_0(b) => b.fsnode_policy_decide().call_map_mode(store, &node, &file),
        })?;
        match call.value {
            Some(mode) if mode > 0o7777 => Err(PluginError::Nonsense {
                question: "map-mode",
                detail: format!("{mode:o} is not a permission mode"),
            }),
            // Never setuid, setgid or sticky, whatever a plugin says.
            value => Ok(Call {
                value: value.map(|mode| mode & 0o777),
                fuel: call.fuel,
            }),
        }
    }
}

/// A fresh budget for the next call.
fn arm(store: &mut Store<Ctx>, limits: Limits) -> Result<(), PluginError> {
    store
        .set_fuel(limits.fuel)
        .map_err(|e| PluginError::Trap(format!("cannot set fuel: {e:#}")))?;
    store.set_epoch_deadline(limits.deadline_ticks());
    Ok(())
}

/// Turns a failed call into the reason the plugin is disabled.
fn classify(err: wasmtime::Error, limits: Limits) -> PluginError {
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PluginError::OutOfFuel { fuel: limits.fuel },
        Some(Trap::Interrupt) => PluginError::Deadline(limits.deadline),
        _ => PluginError::Trap(format!("{err:#}")),
    }
}

fn unreachable_version(version: &str) -> wasmtime::Result<Bindings> {
    Err(wasmtime::format_err!(
        "no bindings for contract version {version}"
    ))
}

fn map<T, U>(call: Call<T>, f: impl FnOnce(T) -> U) -> Call<U> {
    Call {
        value: f(call.value),
        fuel: call.fuel,
    }
}

fn trust(decision: v1::TrustDecision) -> TrustAnswer {
    match decision {
        v1::TrustDecision::Trust => TrustAnswer::Trust,
        v1::TrustDecision::Ask => TrustAnswer::Ask,
        v1::TrustDecision::Ignore => TrustAnswer::Ignore,
    }
}

fn node_v1(node: &NodeFacts) -> v1::NodeFacts {
    v1::NodeFacts {
        id: node.id.to_string(),
        name: node.name.clone(),
        platform: match node.platform {
            Platform::Posix => v1::PlatformKind::Posix,
            Platform::Other => v1::PlatformKind::Other,
        },
        os: node.os.to_owned(),
        now_ms: node.now_ms,
    }
}

fn peer_v1(peer: &PeerFacts) -> v1::Peer {
    v1::Peer {
        id: peer.id.to_string(),
        name: peer.name.clone(),
        device_type: match peer.device_type {
            DeviceType::Desktop => v1::DeviceType::Desktop,
            DeviceType::Mobile => v1::DeviceType::Mobile,
            DeviceType::Server => v1::DeviceType::Server,
            DeviceType::Unknown => v1::DeviceType::Unknown,
        },
        addresses: peer.addresses.iter().map(ToString::to_string).collect(),
        port: peer.port,
    }
}

fn file_v1(file: &FileFacts) -> v1::FileMeta {
    v1::FileMeta {
        transfer_id: file.id.to_string(),
        name: file.name.clone(),
        size: file.size,
        mime: file.mime.clone(),
        mode: file.mode,
        mtime: file.mtime,
    }
}

fn queued_v1(q: &QueuedFacts) -> v1::Queued {
    v1::Queued {
        transfer_id: q.id.to_string(),
        peer: q.peer.to_string(),
        name: q.name.clone(),
        size: q.size,
        mime: q.mime.clone(),
        done_bytes: q.done_bytes,
        queued_at_ms: q.queued_at_ms,
    }
}
