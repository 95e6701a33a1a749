//! Signaling (spec 3.1, 3.2): the line framer and message decoder over an arbitrary byte stream
//! cut at arbitrary points, and every decoded message fed into the node's core (`Core::handle`)
//! as `Input::Signal` (or `Input::Hello`) from a trusted or an untrusted peer, with data-channel
//! bytes and time passing in between. No sockets: the core is sans-IO.
//!
//! Checks: the framer never buffers more than its limit and hands back exactly the stream's
//! lines; a decoded message re-encodes to a line that decodes to the same message; the core
//! never panics and its output per input stays bounded.
#![no_main]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fsnode::core::discovery::{Announcement, instance_name, txt_records};
use fsnode::core::node::{Core, Effect, Input, Me, Now, Output};
use fsnode::core::request::Command;
use fsnode::core::signal::{LineFramer, MAX_LINE_BYTES, Message};
use fsnode::core::transfers::{StoreOp, StoreResult};
use fsnode::core::{DeviceId, DeviceType, State, TransferId};
use libfuzzer_sys::fuzz_target;

mod common;
use common::Cursor;

/// The framer's limit in this target: small, so the fuzzer reaches it.
const SMALL_LIMIT: usize = 512;

/// Input: a control byte (bit 0: use the real 256 KiB line limit instead of a small one), then
/// steps, each a tag byte (modulo 4) and its fields; see [`Step::read`].
#[derive(Debug)]
enum Step<'a> {
    /// 0: bytes (u16 LE length) arriving on signaling connection `conn % 4` of peer `peer % 3`
    /// (1 = trusted, 2 = discovered but untrusted, 3 = unknown).
    Bytes { peer: u8, conn: u8, bytes: &'a [u8] },
    /// 1: a binary message (u16 LE length) on the peer's data channel (transfer messages, CBOR).
    Channel { peer: u8, data: &'a [u8] },
    /// 2: the shell finishes the oldest file operation it was asked for (`ok` or not).
    Store { ok: bool },
    /// 3: time passes (seconds, u8); due timers fire.
    Wait { secs: u8 },
}

impl<'a> Step<'a> {
    fn read(c: &mut Cursor<'a>) -> Option<Self> {
        if c.is_empty() {
            return None;
        }
        Some(match c.u8() % 4 {
            0 => Step::Bytes {
                peer: c.u8(),
                conn: c.u8(),
                bytes: c.bytes(),
            },
            1 => Step::Channel {
                peer: c.u8(),
                data: c.bytes(),
            },
            2 => Step::Store { ok: c.bool() },
            _ => Step::Wait { secs: c.u8() },
        })
    }
}

fn device(n: u8) -> DeviceId {
    DeviceId::from_sha256(&[n; 32])
}

fn announcement(n: u8) -> Announcement {
    Announcement {
        instance: instance_name(&device(n)),
        port: 4000 + u16::from(n),
        addresses: vec![format!("10.77.0.{n}").parse().unwrap()],
        txt: txt_records(&device(n), &format!("peer-{n}"), DeviceType::Desktop)
            .into_iter()
            .collect(),
    }
}

struct Shell {
    core: Core,
    epoch: Instant,
    secs: u64,
    store: VecDeque<(TransferId, StoreOp)>,
}

impl Shell {
    fn now(&self) -> Now {
        Now {
            instant: self.epoch + Duration::from_secs(self.secs),
            wall_ms: 1_700_000_000_000 + 1_000 * self.secs as i64,
        }
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        self.core.handle(input, now);
        self.drain();
    }

    fn drain(&mut self) {
        let mut count = 0;
        while let Some(output) = self.core.poll_output() {
            count += 1;
            assert!(count < 100_000, "unbounded output");
            if let Output::Effect(Effect::Store { id, op }) = output {
                // Bounded: a real shell runs these one at a time per transfer.
                if self.store.len() < 4096 {
                    self.store.push_back((id, op));
                }
            }
        }
    }

    fn store_step(&mut self, ok: bool) {
        let Some((id, op)) = self.store.pop_front() else {
            return;
        };
        let result = match op {
            StoreOp::Prepare { .. } if ok => StoreResult::Prepared { part_len: 0 },
            StoreOp::Prepare { .. } => StoreResult::PrepareFailed {
                reason: "no space".into(),
            },
            StoreOp::Write { index, sync, .. } => StoreResult::Verified {
                index,
                ok,
                synced: ok && sync,
            },
            StoreOp::Sync if ok => StoreResult::Synced,
            // LocalSend's uploads (off in this model, answered as the store would).
            StoreOp::Append { offset, data, sync } if ok => StoreResult::Appended {
                end: offset + data.len() as u64,
                synced: sync,
            },
            StoreOp::Finalize { .. } | StoreOp::FinalizeStream { .. } if ok => {
                StoreResult::Finalized {
                    path: PathBuf::from("/srv/receive/file.bin"),
                }
            }
            StoreOp::Sync
            | StoreOp::Append { .. }
            | StoreOp::Finalize { .. }
            | StoreOp::FinalizeStream { .. } => StoreResult::WriteFailed {
                reason: "EIO".into(),
            },
            StoreOp::Read { index, len, .. } if ok => StoreResult::ChunkRead {
                index,
                data: vec![0; len.min(1 << 16) as usize],
                sha256: [0; 32],
            },
            StoreOp::Read { .. } => StoreResult::ReadFailed {
                reason: "EIO".into(),
            },
            StoreOp::DeletePart | StoreOp::Discard { .. } | StoreOp::Close => return,
        };
        self.handle(Input::Store { id, result });
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let limit = if c.bool() {
        MAX_LINE_BYTES
    } else {
        SMALL_LIMIT
    };
    let epoch = Instant::now();
    let me = Me {
        id: device(0),
        name: "me".into(),
        device_type: DeviceType::Server,
        signaling_port: 4000,
    };
    let mut shell = Shell {
        core: Core::new(me, State::default(), epoch),
        epoch,
        secs: 0,
        store: VecDeque::new(),
    };
    shell.handle(Input::Announced(announcement(1)));
    shell.handle(Input::Announced(announcement(2)));
    shell.handle(Input::Command {
        token: 1,
        command: Command::TrustAdd {
            device: device(1).to_string(),
        },
    });
    assert!(shell.core.state().peers[&device(1)].trusted);

    // One framer per (peer, connection): the stream of each is cut wherever the steps cut it.
    let mut framers: Vec<(u8, u8, LineFramer, Vec<u8>, bool)> = Vec::new();
    while let Some(step) = Step::read(&mut c) {
        match step {
            Step::Bytes { peer, conn, bytes } => {
                let peer = peer % 3 + 1;
                let conn = conn % 4;
                let slot = match framers.iter().position(|f| f.0 == peer && f.1 == conn) {
                    Some(i) => i,
                    None => {
                        framers.push((peer, conn, LineFramer::new(limit), Vec::new(), false));
                        framers.len() - 1
                    }
                };
                let (_, _, framer, unterminated, closed) = &mut framers[slot];
                if *closed {
                    continue;
                }
                let lines = match framer.push(bytes) {
                    Ok(lines) => lines,
                    Err(_) => {
                        // Too long: the connection is closed. The refusal is exact.
                        let longest = bytes
                            .split(|&b| b == b'\n')
                            .enumerate()
                            .map(|(i, l)| l.len() + if i == 0 { unterminated.len() } else { 0 })
                            .max()
                            .unwrap_or(0);
                        assert!(longest > limit, "refused a line of {longest} bytes");
                        *closed = true;
                        continue;
                    }
                };
                // The framer returns exactly the stream's lines, and keeps the rest.
                let mut expected = std::mem::take(unterminated);
                expected.extend_from_slice(bytes);
                let mut parts: Vec<&[u8]> = expected.split(|&b| b == b'\n').collect();
                let tail = parts.pop().unwrap_or_default().to_vec();
                assert_eq!(lines.len(), parts.len());
                for (line, part) in lines.iter().zip(&parts) {
                    assert_eq!(line.as_slice(), *part);
                    assert!(line.len() <= limit);
                }
                assert_eq!(framer.pending(), tail.len());
                assert!(framer.pending() <= limit);
                *unterminated = tail;

                for line in lines {
                    let Ok(message) = Message::decode(&line) else {
                        continue;
                    };
                    if !matches!(message, Message::Unknown | Message::HelloWrongVersion) {
                        let encoded = message.encode();
                        assert_eq!(encoded.last(), Some(&b'\n'));
                        assert!(!encoded[..encoded.len() - 1].contains(&b'\n'));
                        let again = Message::decode(&encoded[..encoded.len() - 1])
                            .expect("our own line decodes");
                        assert_eq!(again, message);
                    }
                    let input = match message {
                        Message::Hello(hello) => Input::Hello {
                            conn: u64::from(peer) * 16 + u64::from(conn),
                            from: SocketAddr::new(
                                format!("10.77.0.{peer}").parse().unwrap(),
                                4000 + u16::from(peer),
                            ),
                            hello,
                            token: None,
                        },
                        message => Input::Signal {
                            conn: u64::from(peer) * 16 + u64::from(conn),
                            peer: device(peer),
                            message,
                        },
                    };
                    shell.handle(input);
                }
            }
            Step::Channel { peer, data } => {
                shell.handle(Input::Channel {
                    peer: device(peer % 3 + 1),
                    data: data.to_vec(),
                });
            }
            Step::Store { ok } => shell.store_step(ok),
            Step::Wait { secs } => {
                shell.secs += u64::from(secs);
                let now = shell.now();
                if shell
                    .core
                    .poll_timeout()
                    .is_some_and(|at| at <= now.instant)
                {
                    shell.core.handle_timeout(now);
                    shell.drain();
                }
            }
        }
    }
});
