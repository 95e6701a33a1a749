//! The policy thread: the plugin host lives on a thread of its own, so a plugin that thinks
//! for its whole deadline holds that thread, never the node's loop. The core's `AskPolicy`
//! effects come in as jobs; each answer goes back to the loop as `Input::PolicyAnswer`.
//! Instances are the host's, loaded once and reused for every call.

use tracing::debug;

use crate::control::Reply;
use crate::core::node::{Input, MAX_QUESTIONS};
use crate::core::policy::{Policy, PolicyRequest};

/// What the policy thread is asked to do.
enum Job {
    Ask(Box<PolicyRequest>),
    /// `fsnode plugins list`: the plugins with their counters.
    Describe(async_channel::Sender<Reply>),
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
