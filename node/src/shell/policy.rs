//! The policy thread: the plugin host lives on a thread of its own, so a plugin that thinks
//! for its whole deadline holds that thread, never the node's loop. The core's `AskPolicy`
//! effects come in as jobs; each answer goes back to the loop as `Input::PolicyAnswer`.
//! Instances are the host's, loaded once and reused for every call.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use crate::control::{ErrorKind, Reply};
use crate::core::node::{Input, MAX_QUESTIONS};
use crate::core::policy::{Policy, PolicyRequest, in_use};
use crate::policy::{PluginHost, Settings};
use crate::shell::runtime;

/// How often the plugin directory is looked at for new, changed or removed plugins.
pub const PLUGIN_DIR_POLL: Duration = Duration::from_secs(2);

/// Entries of the plugin directory looked at, at most (a bound on a directory filled by
/// mistake; plugins past it are not noticed until `fsnode plugins reload`).
const PLUGIN_DIR_ENTRIES: usize = 256;

/// What the policy thread is asked to do.
enum Job {
    Ask(Box<PolicyRequest>),
    /// `fsnode plugins list`: the plugins with their counters.
    Describe(async_channel::Sender<Reply>),
    /// Load the plugins again (the directory changed, or `fsnode plugins reload`); the new
    /// list goes to `reply` when one waits.
    Reload {
        settings: Box<Settings>,
        reply: Option<async_channel::Sender<Reply>>,
    },
}

/// The handle the node loop keeps; dropping it ends the thread once the jobs queued are done.
pub struct PolicyThread {
    jobs: async_channel::Sender<Job>,
}

impl PolicyThread {
    /// Starts the thread that owns `policy`; answers go to `answers` (the node loop's inputs).
    pub fn start(
        mut policy: Box<dyn Policy>,
        answers: async_channel::Sender<Input>,
    ) -> std::io::Result<Self> {
        // As many as the core may have out, plus room for `plugins list` requests.
        let (jobs, queue) = async_channel::bounded::<Job>(MAX_QUESTIONS + 16);
        std::thread::Builder::new()
            .name("fsnode-policy".into())
            .spawn(move || {
                while let Ok(job) = queue.recv_blocking() {
                    match job {
                        Job::Ask(request) => {
                            let answer = request.ask(policy.as_mut());
                            if answers.send_blocking(Input::PolicyAnswer(answer)).is_err() {
                                break; // the node loop is gone
                            }
                        }
                        Job::Describe(reply) => {
                            let _ = reply.try_send(Reply::Plugins {
                                plugins: policy.describe(),
                            });
                        }
                        Job::Reload { settings, reply } => match PluginHost::load(&settings) {
                            Ok(mut host) => {
                                let disabled = host.take_disabled();
                                let plugins = host.describe();
                                let loaded = in_use(&plugins);
                                info!(plugins = ?loaded, "policy plugins loaded again");
                                policy = Box::new(host);
                                let reloaded = Input::PluginsReloaded { loaded, disabled };
                                if answers.send_blocking(reloaded).is_err() {
                                    break;
                                }
                                if let Some(reply) = reply {
                                    let _ = reply.try_send(Reply::Plugins { plugins });
                                }
                            }
                            Err(err) => {
                                // The plugins in use stay.
                                warn!("could not load the policy plugins again: {err}");
                                if let Some(reply) = reply {
                                    let message = format!("loading the plugins failed: {err}");
                                    let _ =
                                        reply.try_send(Reply::error(ErrorKind::Internal, message));
                                }
                            }
                        },
                    }
                }
            })?;
        Ok(Self { jobs })
    }

    /// Queues a question. A full queue drops it: the core's timeout then applies the default.
    pub fn ask(&self, request: PolicyRequest) {
        if self.jobs.try_send(Job::Ask(Box::new(request))).is_err() {
            debug!("policy thread busy; the question gets the default at its timeout");
        }
    }

    /// Loads the plugins again from `settings`; the new list goes to `reply` (`fsnode plugins
    /// reload`), and the node hears of it as `Input::PluginsReloaded`.
    pub fn reload(&self, settings: &Settings, reply: Option<async_channel::Sender<Reply>>) {
        let job = Job::Reload {
            settings: Box::new(settings.clone()),
            reply,
        };
        if let Err(err) = self.jobs.try_send(job)
            && let Job::Reload {
                reply: Some(reply), ..
            } = err.into_inner()
        {
            let _ = reply.try_send(Reply::error(
                ErrorKind::Unreachable,
                "the policy thread is busy; try again",
            ));
        }
    }

    /// Watches the plugin directory (a poll every [`PLUGIN_DIR_POLL`]) and loads the plugins
    /// again once a `.wasm` or `.toml` in it was added, changed or removed and has stayed so
    /// for one more poll (a file being copied in is not loaded half-written).
    pub fn watch_dir(&self, settings: Settings) -> runtime::Task<()> {
        let jobs = self.jobs.clone();
        runtime::spawn(async move {
            let dir = settings.dir.clone();
            let look = move || {
                let dir = dir.clone();
                runtime::unblock(move || plugin_files(&dir))
            };
            let mut loaded = look().await;
            let mut seen = loaded.clone();
            loop {
                runtime::sleep(PLUGIN_DIR_POLL).await;
                let now = look().await;
                if now == seen && now != loaded {
                    let job = Job::Reload {
                        settings: Box::new(settings.clone()),
                        reply: None,
                    };
                    if jobs.send(job).await.is_err() {
                        return; // the node is stopping
                    }
                    loaded = now.clone();
                }
                seen = now;
            }
        })
    }

    /// Answers a `plugins` request on `reply` (after the questions queued before it).
    pub fn describe(&self, reply: async_channel::Sender<Reply>) {
        if let Err(err) = self.jobs.try_send(Job::Describe(reply))
            && let Job::Describe(reply) = err.into_inner()
        {
            let _ = reply.try_send(Reply::error(
                crate::control::ErrorKind::Unreachable,
                "the policy thread is busy; try again",
            ));
        }
    }
}

/// The plugin files of `dir` (`.wasm` and their `.toml` configs) with size and modification
/// time, sorted: what the directory watch compares.
fn plugin_files(dir: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .take(PLUGIN_DIR_ENTRIES)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if !(name.ends_with(".wasm") || name.ends_with(".toml")) {
                return None;
            }
            let meta = entry.metadata().ok()?;
            Some((name, meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    // The test measures that asking does not wait for the plugin.
    #![allow(clippy::disallowed_methods)]

    use std::time::{Duration, Instant};

    use super::*;
    use crate::core::DeviceId;
    use crate::core::DeviceType;
    use crate::core::policy::{
        Answer, Decided, NodeFacts, PeerFacts, Platform, Question, TrustAnswer,
    };

    /// Trusts every offer after thinking for 90 ms, and counts its instances' calls.
    struct Slow {
        calls: u64,
    }

    impl Policy for Slow {
        fn on_offer(&mut self, _: &NodeFacts, _: &PeerFacts) -> Option<Decided<TrustAnswer>> {
            std::thread::sleep(Duration::from_millis(90));
            self.calls += 1;
            Some(Decided {
                plugin: "slow".into(),
                answer: TrustAnswer::Trust,
            })
        }

        fn describe(&self) -> Vec<crate::control::PluginRow> {
            vec![crate::control::PluginRow {
                order: 1,
                name: "slow".into(),
                path: String::new(),
                version: None,
                disabled: None,
                calls: self.calls,
                fuel: 0,
            }]
        }
    }

    fn offer(id: u64) -> PolicyRequest {
        let device = DeviceId::from_sha256(&[7; 32]);
        PolicyRequest {
            id,
            node: NodeFacts {
                id: device.clone(),
                name: "me".into(),
                platform: Platform::current(),
                os: "linux",
                now_ms: 0,
            },
            question: Question::OnOffer {
                peer: PeerFacts {
                    id: device,
                    name: "peer".into(),
                    device_type: DeviceType::Desktop,
                    addresses: Vec::new(),
                    port: 0,
                },
            },
        }
    }

    #[test]
    fn questions_are_answered_in_order_off_the_callers_thread_by_one_instance() {
        let (inputs, answers) = async_channel::bounded(16);
        let thread = PolicyThread::start(Box::new(Slow { calls: 0 }), inputs).unwrap();
        let asked = Instant::now();
        for id in 0..3 {
            thread.ask(offer(id));
        }
        // Asking returns at once: the 90 ms calls run on the policy thread.
        assert!(asked.elapsed() < Duration::from_millis(50));
        for id in 0..3 {
            match answers.recv_blocking().unwrap() {
                Input::PolicyAnswer(answer) => {
                    assert_eq!(answer.id, id);
                    assert!(matches!(
                        answer.answer,
                        Answer::Trust(Some(Decided {
                            answer: TrustAnswer::Trust,
                            ..
                        }))
                    ));
                }
                other => panic!("not an answer: {other:?}"),
            }
        }
        let (reply_tx, reply) = async_channel::bounded(1);
        thread.describe(reply_tx);
        match reply.recv_blocking().unwrap() {
            // The same instance answered all three.
            Reply::Plugins { plugins } => assert_eq!(plugins[0].calls, 3),
            other => panic!("{other:?}"),
        }
    }
}
