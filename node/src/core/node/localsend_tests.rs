//! The LocalSend box of the core, driven with time passed in: what each request gets, what is
//! journaled, what the store is asked to do.
#![allow(clippy::disallowed_methods)]

use super::*;
use crate::core::TransferStatus;
use crate::core::localsend::{self as ls, Request};
use sha2::{Digest, Sha256};

const OURS: [u8; 32] = [1; 32];
const PHONE: [u8; 32] = [0xab; 32];

fn me() -> Me {
    Me {
        id: DeviceId::from_sha256(&[0; 32]),
        name: "gateway".into(),
        device_type: DeviceType::Server,
        signaling_port: 4000,
    }
}

fn phone_addr() -> SocketAddr {
    "10.77.0.2:53317".parse().unwrap()
}

struct H {
    core: Core,
    start: Instant,
}

impl H {
    fn new(pin: Option<&str>) -> Self {
        Self::with_state(pin, State::default())
    }

    fn with_state(pin: Option<&str>, state: State) -> Self {
        let start = Instant::now();
        let mut core = Core::new(me(), state, start);
        core.enable_localsend(
            ls::Settings {
                fingerprint: OURS,
                port: ls::DEFAULT_PORT,
                pin: pin.map(Into::into),
                device_type: "server",
            },
            start,
        );
        Self { core, start }
    }

    fn now(&self) -> Now {
        Now {
            instant: self.start + Duration::from_secs(1),
            wall_ms: 1_000,
        }
    }

    fn handle(&mut self, input: Input) -> Vec<Output> {
        self.core.handle(input, self.now());
        std::iter::from_fn(|| self.core.poll_output()).collect()
    }

    fn ls(&mut self, input: ls::Input) -> Vec<Output> {
        self.handle(Input::LocalSend(input))
    }

    fn trust_phone(&mut self) {
        let phone = DeviceId::from_localsend_fingerprint(&PHONE);
        self.handle(Input::Command {
            token: 1,
            command: crate::core::request::Command::TrustAdd {
                device: phone.to_string(),
            },
        });
    }

    fn prepare(
        &mut self,
        req: u64,
        from: SocketAddr,
        pin: Option<&str>,
        files: &str,
    ) -> Vec<Output> {
        self.ls(ls::Input::Request {
            req,
            from,
            request: Request::PrepareUpload {
                pin: pin.map(Into::into),
                body: prepare_body(files).into_bytes(),
                nonce: [9; 32],
            },
        })
    }
}

fn prepare_body(files: &str) -> String {
    format!(
        r#"{{"info":{{"alias":"phone","version":"2.1","deviceType":"mobile","fingerprint":"{}","port":53317,"protocol":"https"}},"files":{files}}}"#,
        hex::encode_upper(PHONE)
    )
}

fn one_file(data: &[u8]) -> String {
    let sha = hex::encode(Sha256::digest(data));
    format!(
        r#"{{"f1":{{"id":"f1","fileName":"photo.jpg","size":{},"fileType":"image/jpeg","sha256":"{sha}"}}}}"#,
        data.len()
    )
}

fn kinds(outputs: &[Output]) -> Vec<&'static str> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(s) => Some(s.event.kind()),
            _ => None,
        })
        .collect()
}

fn ls_effects(outputs: &[Output]) -> Vec<ls::Effect> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Effect(Effect::LocalSend(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn reply_of(outputs: &[Output], req: u64) -> Option<(u16, Vec<u8>)> {
    ls_effects(outputs).into_iter().find_map(|e| match e {
        ls::Effect::Reply {
            req: r,
            status,
            body,
        } if r == req => Some((status, body)),
        _ => None,
    })
}

fn store_ops(outputs: &[Output]) -> Vec<(TransferId, StoreOp)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Effect(Effect::Store { id, op }) => Some((*id, op.clone())),
            _ => None,
        })
        .collect()
}

/// A trusted phone's session up to the `200` with its token, the fingerprint checked.
fn accepted_session(h: &mut H, data: &[u8]) -> (String, String, TransferId) {
    h.trust_phone();
    let out = h.prepare(10, phone_addr(), None, &one_file(data));
    let effects = ls_effects(&out);
    assert!(
        effects.iter().any(
            |e| matches!(e, ls::Effect::Probe { claimed, port: 53317, .. } if *claimed == PHONE)
        ),
        "the claim is checked at the sender's own server: {effects:?}"
    );
    assert_eq!(reply_of(&out, 10), None, "no answer before the check");
    let out = h.ls(ls::Input::Probed {
        ip: phone_addr().ip(),
        port: 53317,
        claimed: PHONE,
        presented: Ok(PHONE),
    });
    let ops = store_ops(&out);
    let [(space_id, StoreOp::Prepare { size, .. })] = ops.as_slice() else {
        panic!("one space check: {ops:?}")
    };
    assert_eq!(*size, data.len() as u64);
    let out = h.handle(Input::Store {
        id: *space_id,
        result: StoreResult::Prepared { part_len: 0 },
    });
    let (status, body) = reply_of(&out, 10).expect("answered");
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let token = answer["files"]["f1"].as_str().unwrap().to_owned();
    let session = answer["sessionId"].as_str().unwrap().to_owned();
    let k = kinds(&out);
    for kind in ["TransferQueued", "TransferStarted", "TransferAccepted"] {
        assert!(k.contains(&kind), "{kind} in {k:?}");
    }
    (session, token, *space_id)
}

#[test]
fn an_untrusted_sender_gets_403_and_an_authorization_request() {
    let mut h = H::new(None);
    let out = h.prepare(1, phone_addr(), None, &one_file(b"hi"));
    assert_eq!(reply_of(&out, 1).map(|r| r.0), Some(403));
    let k = kinds(&out);
    assert!(k.contains(&"AuthorizationRequested"), "{k:?}");
    assert!(!k.contains(&"TransferQueued"));
    let phone = DeviceId::from_localsend_fingerprint(&PHONE);
    assert_eq!(h.core.state().peers[&phone].name, "phone");
    // Again within the minute: refused without a question or a record.
    let out = h.prepare(2, phone_addr(), None, &one_file(b"hi"));
    assert_eq!(reply_of(&out, 2).map(|r| r.0), Some(403));
    assert!(kinds(&out).is_empty(), "{:?}", kinds(&out));
}

#[test]
fn a_trusted_senders_file_is_written_checked_and_completed() {
    let mut h = H::new(None);
    let data = vec![7u8; 3000];
    let (session, token, id) = accepted_session(&mut h, &data);
    let upload = |file: &str, token: &str| Request::Upload {
        session: session.clone(),
        file: file.into(),
        token: token.into(),
        length: Some(3000),
    };
    // Another address, a wrong token, a wrong length: refused.
    let elsewhere: SocketAddr = "10.77.0.9:40000".parse().unwrap();
    let out = h.ls(ls::Input::Request {
        req: 20,
        from: elsewhere,
        request: upload("f1", &token),
    });
    assert_eq!(reply_of(&out, 20).map(|r| r.0), Some(403));
    let out = h.ls(ls::Input::Request {
        req: 21,
        from: phone_addr(),
        request: upload("f1", "nope"),
    });
    assert_eq!(reply_of(&out, 21).map(|r| r.0), Some(403));
    // The upload: a stale `.part` goes, the store prepares, then pieces as the core asks.
    let out = h.ls(ls::Input::Request {
        req: 22,
        from: phone_addr(),
        request: upload("f1", &token),
    });
    let ops: Vec<StoreOp> = store_ops(&out).into_iter().map(|(_, op)| op).collect();
    assert!(
        matches!(
            ops.as_slice(),
            [StoreOp::DeletePart, StoreOp::Prepare { .. }]
        ),
        "{ops:?}"
    );
    let out = h.handle(Input::Store {
        id,
        result: StoreResult::Prepared { part_len: 0 },
    });
    assert_eq!(ls_effects(&out), vec![ls::Effect::Proceed { req: 22 }]);
    let out = h.ls(ls::Input::Body {
        req: 22,
        data: data[..1000].to_vec(),
    });
    assert!(
        store_ops(&out)
            .iter()
            .any(|(_, op)| matches!(op, StoreOp::Append { offset: 0, .. }))
    );
    assert_eq!(ls_effects(&out), vec![ls::Effect::Proceed { req: 22 }]);
    h.ls(ls::Input::Body {
        req: 22,
        data: data[1000..].to_vec(),
    });
    let out = h.ls(ls::Input::BodyEnd { req: 22 });
    let finalize = store_ops(&out);
    assert!(
        finalize.iter().any(|(_, op)| matches!(op, StoreOp::FinalizeStream { sha256: Some(s), .. } if *s == <[u8; 32]>::from(Sha256::digest(&data)))),
        "the announced SHA-256 is checked before the rename: {finalize:?}"
    );
    let out = h.handle(Input::Store {
        id,
        result: StoreResult::Finalized {
            path: "/r/photo.jpg".into(),
        },
    });
    assert_eq!(reply_of(&out, 22).map(|r| r.0), Some(200));
    assert!(kinds(&out).contains(&"TransferCompleted"));
    assert_eq!(
        h.core.state().transfers[&id].status,
        TransferStatus::Completed
    );
    // The same file again: the session is over.
    let out = h.ls(ls::Input::Request {
        req: 23,
        from: phone_addr(),
        request: upload("f1", &token),
    });
    assert_eq!(reply_of(&out, 23).map(|r| r.0), Some(403));
}

#[test]
fn more_bytes_than_announced_and_a_broken_upload_fail_and_drop_the_part() {
    let mut h = H::new(None);
    let (session, token, id) = accepted_session(&mut h, &[1u8; 10]);
    let upload = Request::Upload {
        session,
        file: "f1".into(),
        token,
        length: None,
    };
    h.ls(ls::Input::Request {
        req: 30,
        from: phone_addr(),
        request: upload,
    });
    h.handle(Input::Store {
        id,
        result: StoreResult::Prepared { part_len: 0 },
    });
    let out = h.ls(ls::Input::Body {
        req: 30,
        data: vec![0; 11],
    });
    assert_eq!(reply_of(&out, 30).map(|r| r.0), Some(400));
    assert!(kinds(&out).contains(&"TransferFailed"));
    assert!(
        store_ops(&out)
            .iter()
            .any(|(_, op)| *op == StoreOp::DeletePart)
    );
    assert_eq!(h.core.state().transfers[&id].status, TransferStatus::Failed);
}

#[test]
fn a_fingerprint_the_senders_server_does_not_present_is_refused_and_journaled() {
    let mut h = H::new(None);
    h.trust_phone();
    h.prepare(40, phone_addr(), None, &one_file(b"x"));
    let out = h.ls(ls::Input::Probed {
        ip: phone_addr().ip(),
        port: 53317,
        claimed: PHONE,
        presented: Ok([0xcd; 32]),
    });
    assert_eq!(reply_of(&out, 40).map(|r| r.0), Some(403));
    assert!(
        kinds(&out).contains(&"FingerprintMismatch"),
        "{:?}",
        kinds(&out)
    );
    assert!(!kinds(&out).contains(&"TransferQueued"));
}

#[test]
fn with_a_pin_set_it_is_required_and_a_verified_sender_with_it_is_trusted() {
    let mut h = H::new(Some("4711"));
    let out = h.prepare(50, phone_addr(), None, &one_file(b"x"));
    assert_eq!(reply_of(&out, 50).map(|r| r.0), Some(401));
    let out = h.prepare(51, phone_addr(), Some("0000"), &one_file(b"x"));
    assert_eq!(reply_of(&out, 51).map(|r| r.0), Some(401));
    h.prepare(52, phone_addr(), Some("4711"), &one_file(b"x"));
    let out = h.ls(ls::Input::Probed {
        ip: phone_addr().ip(),
        port: 53317,
        claimed: PHONE,
        presented: Ok(PHONE),
    });
    let phone = DeviceId::from_localsend_fingerprint(&PHONE);
    assert!(h.core.state().is_trusted(&phone));
    assert!(out.iter().any(|o| matches!(o, Output::Event(s) if matches!(&s.event, Event::PeerAuthorized { by: Authority::Policy { plugin }, .. } if plugin == "localsend-pin"))));
}

#[test]
fn an_announcement_is_answered_with_a_register_pinned_to_its_fingerprint() {
    let mut h = H::new(None);
    let body = format!(
        r#"{{"alias":"phone","version":"2.1","deviceType":"mobile","fingerprint":"{}","port":53317,"protocol":"https","announce":true}}"#,
        hex::encode_upper(PHONE)
    );
    let out = h.ls(ls::Input::Datagram {
        from: "10.77.0.2:53317".parse().unwrap(),
        data: body.clone().into_bytes(),
    });
    let effects = ls_effects(&out);
    assert!(
        effects.iter().any(|e| matches!(e, ls::Effect::Call { path, fingerprint, .. } if path == ls::PATH_REGISTER && *fingerprint == PHONE)),
        "{effects:?}"
    );
    assert!(kinds(&out).contains(&"PeerDiscovered"));
    // The same address again within the interval: not answered again.
    let out = h.ls(ls::Input::Datagram {
        from: "10.77.0.2:53317".parse().unwrap(),
        data: body.into_bytes(),
    });
    assert!(ls_effects(&out).is_empty());
    // Our own announcement is ignored.
    let own = format!(
        r#"{{"alias":"me","fingerprint":"{}","announce":true}}"#,
        hex::encode(OURS)
    );
    let out = h.ls(ls::Input::Datagram {
        from: "10.77.0.3:53317".parse().unwrap(),
        data: own.into_bytes(),
    });
    assert!(out.is_empty());
}

#[test]
fn a_localsend_id_claimed_over_mdns_or_signaling_is_ignored() {
    let mut h = H::new(None);
    let claimed = DeviceId::from_localsend_fingerprint(&PHONE);
    let out = h.handle(Input::Hello {
        conn: 7,
        from: "10.77.0.2:4000".parse().unwrap(),
        hello: crate::core::signal::Hello {
            id: claimed.clone(),
            name: "impostor".into(),
            device_type: DeviceType::Desktop,
            port: 4000,
        },
        token: None,
    });
    assert!(kinds(&out).is_empty());
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Effect(Effect::CloseSignaling { conn: 7 })))
    );
    assert!(!h.core.state().peers.contains_key(&claimed));
}

#[test]
fn an_upload_interrupted_by_a_restart_fails_and_its_part_is_discarded() {
    let mut first = H::new(None);
    let (_, _, id) = accepted_session(&mut first, &[1u8; 10]);
    let state = first.core.state().clone();
    let mut h = H::with_state(None, state);
    h.core.handle_timeout(h.now());
    let out: Vec<Output> = std::iter::from_fn(|| h.core.poll_output()).collect();
    assert!(kinds(&out).contains(&"TransferFailed"));
    assert!(
        store_ops(&out)
            .iter()
            .any(|(i, op)| *i == id
                && matches!(op, StoreOp::Discard { name } if name == "photo.jpg"))
    );
    assert_eq!(h.core.state().transfers[&id].status, TransferStatus::Failed);
    // And the node announces itself on the multicast group.
    assert!(
        ls_effects(&out)
            .iter()
            .any(|e| matches!(e, ls::Effect::Multicast { .. }))
    );
}

#[test]
fn the_operator_cancels_a_running_upload_and_the_sender_is_answered_409() {
    let mut h = H::new(None);
    let (session, token, id) = accepted_session(&mut h, &[3u8; 100]);
    let upload = Request::Upload {
        session,
        file: "f1".into(),
        token,
        length: Some(100),
    };
    h.ls(ls::Input::Request {
        req: 60,
        from: phone_addr(),
        request: upload,
    });
    h.handle(Input::Store {
        id,
        result: StoreResult::Prepared { part_len: 0 },
    });
    h.ls(ls::Input::Body {
        req: 60,
        data: vec![3; 50],
    });
    let out = h.handle(Input::Command {
        token: 2,
        command: crate::core::request::Command::Cancel {
            transfer: id.to_string(),
        },
    });
    assert_eq!(reply_of(&out, 60).map(|r| r.0), Some(409));
    assert!(kinds(&out).contains(&"TransferCancelled"));
    assert!(
        store_ops(&out)
            .iter()
            .any(|(_, op)| *op == StoreOp::DeletePart)
    );
    assert_eq!(
        h.core.state().transfers[&id].status,
        TransferStatus::Cancelled
    );
    // The rest of the body finds nothing to write to.
    let out = h.ls(ls::Input::Body {
        req: 60,
        data: vec![3; 50],
    });
    assert!(store_ops(&out).is_empty());
}
