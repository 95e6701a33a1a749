//! LocalSend's JSON bodies (PROTOCOL.md section 7): announcements and `register` bodies,
//! `prepare-upload` requests and answers, all bytes from the network; then the same bytes
//! through the core's LocalSend box as a datagram, a `register` and a `prepare-upload` (from a
//! trusted and an untrusted sender, with and without a PIN).
#![no_main]

use std::time::{Duration, Instant};

use fsnode::core::localsend::{self as ls, Request, wire};
use fsnode::core::node::{Core, Effect, Input, Me, Now, Output};
use fsnode::core::{DeviceId, DeviceType, State};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    if let Ok(info) = wire::decode_info(body) {
        assert!(body.len() <= wire::MAX_INFO_BYTES);
        if let Ok(claim) = info.claim(ls::DEFAULT_PORT) {
            assert!(claim.alias.len() <= wire::MAX_ALIAS_BYTES);
            assert!(claim.port != 0);
            // The fingerprint names a LocalSend device id that parses back.
            let id = DeviceId::from_localsend_fingerprint(&claim.fingerprint);
            assert_eq!(id.as_str().parse::<DeviceId>().ok().as_ref(), Some(&id));
            assert_eq!(id.localsend_fingerprint(), Some(claim.fingerprint));
        }
    }
    if let Ok((_, files)) = wire::decode_prepare(body) {
        assert!(files.len() <= wire::MAX_FILES);
        for file in &files {
            assert!(!file.mime.is_empty());
        }
    }
    let _ = wire::decode_prepare_response(body);

    // The core: never a panic, a bounded answer to each input, statuses from the documented set.
    let start = Instant::now();
    let me = Me {
        id: DeviceId::from_sha256(&[0; 32]),
        name: "fuzz".into(),
        device_type: DeviceType::Server,
        signaling_port: 4000,
    };
    let mut core = Core::new(me, State::default(), start);
    core.enable_localsend(
        ls::Settings {
            fingerprint: [1; 32],
            port: ls::DEFAULT_PORT,
            pin: (control & 1 == 1).then(|| "4711".to_owned()),
            device_type: "server",
        },
        start,
    );
    let now = Now {
        instant: start + Duration::from_secs(1),
        wall_ms: 1_000,
    };
    if control & 2 == 2 {
        // Trust whatever device the body claims to be, so its files get as far as they can.
        if let Ok(claim) = wire::decode_info(body)
            .or_else(|_| wire::decode_prepare(body).map(|(info, _)| info))
            .and_then(|info| info.claim(ls::DEFAULT_PORT))
        {
            let id = DeviceId::from_localsend_fingerprint(&claim.fingerprint);
            core.handle(
                Input::Command {
                    token: 1,
                    command: fsnode::core::request::Command::TrustAdd {
                        device: id.to_string(),
                    },
                },
                now,
            );
        }
    }
    let from = "10.77.0.2:53317".parse().unwrap();
    let inputs = [
        ls::Input::Datagram {
            from,
            data: body.to_vec(),
        },
        ls::Input::Request {
            req: 1,
            from,
            request: Request::Register {
                body: body.to_vec(),
            },
        },
        ls::Input::Request {
            req: 2,
            from,
            request: Request::PrepareUpload {
                pin: (control & 4 == 4).then(|| "4711".to_owned()),
                body: body.to_vec(),
                nonce: [control; 32],
            },
        },
        ls::Input::Probed {
            ip: from.ip(),
            port: ls::DEFAULT_PORT,
            claimed: [0xab; 32],
            presented: Ok([0xab; 32]),
        },
    ];
    for input in inputs {
        core.handle(Input::LocalSend(input), now);
        let mut outputs = 0;
        while let Some(output) = core.poll_output() {
            outputs += 1;
            if let Output::Effect(Effect::LocalSend(ls::Effect::Reply { status, .. })) = output {
                assert!(
                    [200, 204, 400, 401, 403, 409, 429, 500, 507].contains(&status),
                    "status {status}"
                );
            }
        }
        // Each file of a session costs a few events; the rest is a handful.
        assert!(outputs <= 16 + 4 * wire::MAX_FILES, "{outputs} outputs");
    }
});
