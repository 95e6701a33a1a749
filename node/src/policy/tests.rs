//! The host against real components: the shipped plugins and fixtures that misbehave on
//! purpose (`plugins/fixtures/`), all built from source by `build::repository_plugins`.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::core::policy::{Platform, Policy};
use crate::core::{DeviceType, TransferId};

fn components() -> PathBuf {
    build::repository_plugins()
        .unwrap_or_else(|e| panic!("building the plugins: {e}"))
        .to_path_buf()
}

fn host(order: &[&str], limits: Limits) -> PluginHost {
    host_with(order, limits, &[])
}

fn host_with(order: &[&str], limits: Limits, config: &[(&str, &str)]) -> PluginHost {
    let settings = Settings {
        dir: components(),
        order: Some(order.iter().map(|s| s.to_string()).collect()),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        limits,
    };
    PluginHost::load(&settings).expect("host")
}

fn device(n: u8) -> DeviceId {
    DeviceId::from_sha256(&[n; 32])
}

fn node() -> NodeFacts {
    NodeFacts {
        id: device(1),
        name: "here".into(),
        platform: Platform::Posix,
        os: "linux",
        now_ms: 1_700_000_000_000,
    }
}

fn peer(name: &str) -> PeerFacts {
    PeerFacts {
        id: device(2),
        name: name.into(),
        device_type: DeviceType::Mobile,
        addresses: vec!["192.0.2.7".parse().unwrap()],
        port: 7000,
    }
}

fn file(size: u64, mime: &str, mode: Option<u32>) -> FileFacts {
    FileFacts {
        id: TransferId([7; 16]),
        name: "holiday.png".into(),
        size,
        mime: mime.into(),
        mode,
        mtime: Some(1_700_000_000),
    }
}

fn queued(n: u8, peer: u8, size: u64) -> QueuedFacts {
    QueuedFacts {
        id: TransferId([n; 16]),
        peer: device(peer),
        name: format!("f{n}"),
        size,
        mime: "application/octet-stream".into(),
        done_bytes: 0,
        queued_at_ms: i64::from(n),
    }
}

fn reasons(host: &mut PluginHost) -> Vec<(String, String)> {
    host.take_disabled()
        .into_iter()
        .map(|d| (d.plugin, d.reason))
        .collect()
}

#[test]
fn trust_on_offer_trusts_offers_and_has_no_other_opinion() {
    let mut host = host(&["trust-on-offer"], Limits::default());
    assert!(reasons(&mut host).is_empty());
    let decided = host.on_offer(&node(), &peer("phone")).expect("an answer");
    assert_eq!(decided.plugin, "trust-on-offer");
    assert_eq!(decided.answer, TrustAnswer::Trust);
    assert_eq!(host.on_discovered(&node(), &peer("phone")), None);
    assert_eq!(host.map_mode(&node(), &file(1, "x/y", None)), None);
    let rows = host.describe();
    assert_eq!(rows[0].version.as_deref(), Some("0.1.0"));
    assert_eq!(rows[0].disabled, None);
    assert_eq!(rows[0].calls, 3);
    assert!(
        rows[0].fuel > 0 && rows[0].fuel < 100_000,
        "{}",
        rows[0].fuel
    );
}

#[test]
fn an_endless_loop_runs_out_of_fuel_and_the_next_plugin_answers() {
    let mut host = host(&["spin", "trust-on-offer"], Limits::default());
    let decided = host.on_offer(&node(), &peer("p")).expect("an answer");
    assert_eq!(decided.plugin, "trust-on-offer");
    let disabled = reasons(&mut host);
    assert_eq!(disabled.len(), 1, "{disabled:?}");
    assert_eq!(disabled[0].0, "spin");
    assert!(disabled[0].1.contains("ran out of fuel"), "{disabled:?}");
    // Disabled for good: not asked again, and listed with the reason.
    assert_eq!(
        host.on_offer(&node(), &peer("p")).unwrap().plugin,
        "trust-on-offer"
    );
    assert!(reasons(&mut host).is_empty());
    let rows = host.describe();
    assert!(rows[0].disabled.as_deref().unwrap().contains("fuel"));
    assert_eq!(rows[0].calls, 1);
}

#[test]
fn the_epoch_deadline_stops_a_loop_when_fuel_would_not() {
    let limits = Limits {
        fuel: u64::MAX / 2,
        deadline: Duration::from_millis(50),
        ..Limits::default()
    };
    let mut host = host(&["spin"], limits);
    assert_eq!(host.on_discovered(&node(), &peer("p")), None);
    let disabled = reasons(&mut host);
    assert!(disabled[0].1.contains("deadline"), "{disabled:?}");
}

#[test]
fn endless_allocation_hits_the_memory_cap() {
    let mut host = host(&["hog"], Limits::default());
    assert_eq!(host.on_offer(&node(), &peer("p")), None);
    let disabled = reasons(&mut host);
    assert_eq!(disabled.len(), 1, "{disabled:?}");
    assert!(disabled[0].1.contains("memory"), "{disabled:?}");
}

#[test]
fn a_trap_disables_the_plugin() {
    let mut host = host(&["trap"], Limits::default());
    assert_eq!(host.on_offer(&node(), &peer("p")), None);
    let disabled = reasons(&mut host);
    assert!(disabled[0].1.starts_with("trapped"), "{disabled:?}");
}

#[test]
fn nonsense_answers_are_refused_and_disable_the_plugin() {
    let mut host = host(&["nonsense"], Limits::default());
    assert_eq!(
        host.on_transfer(&node(), &peer("p"), &file(1, "image/png", None)),
        None
    );
    let disabled = reasons(&mut host);
    assert!(
        disabled[0].1.contains("subdirectory \"../../etc\""),
        "{disabled:?}"
    );

    let mut host = super::tests::host(&["nonsense"], Limits::default());
    let queue = [queued(1, 2, 10), queued(2, 2, 5)];
    assert_eq!(host.schedule(&node(), &queue, &[device(2)]), None);
    assert!(reasons(&mut host)[0].1.contains("not a queued transfer"));

    let mut host = super::tests::host(&["nonsense"], Limits::default());
    assert_eq!(host.map_mode(&node(), &file(1, "x/y", Some(0o644))), None);
    assert!(reasons(&mut host)[0].1.contains("not a permission mode"));
}

#[test]
fn plugins_that_cannot_load_are_listed_as_disabled() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("garbage.wasm"), b"\0asm not really").unwrap();
    // A core module (no component): what a plugin is before `build::componentize`.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let settings = Settings {
        dir: dir.path().to_path_buf(),
        order: None,
        config: Default::default(),
        limits: Limits::default(),
    };
    let mut host = PluginHost::load(&settings).unwrap();
    let disabled = reasons(&mut host);
    assert_eq!(disabled.len(), 2, "{disabled:?}");
    assert!(
        disabled
            .iter()
            .all(|(_, r)| r.contains("not a valid component"))
    );
    let settings = Settings {
        order: Some(vec!["missing".into()]),
        ..settings
    };
    let mut host = PluginHost::load(&settings).unwrap();
    assert!(reasons(&mut host)[0].1.contains("cannot read"));
}

#[test]
fn allowlist_trusts_configured_ids_and_names() {
    let config = format!("devices = [\"{}\"]\nnames = [\"alice-*\"]", device(2));
    let mut host = host_with(&["allowlist"], Limits::default(), &[("allowlist", &config)]);
    assert_eq!(
        host.on_discovered(&node(), &peer("whoever"))
            .map(|d| d.answer),
        Some(TrustAnswer::Trust)
    );
    let mut stranger = peer("alice-phone");
    stranger.id = device(9);
    assert_eq!(
        host.on_offer(&node(), &stranger).map(|d| d.answer),
        Some(TrustAnswer::Trust)
    );
    stranger.name = "mallory".into();
    assert_eq!(host.on_offer(&node(), &stranger), None);

    let mut bad = host_with(
        &["allowlist"],
        Limits::default(),
        &[("allowlist", "nope = 1")],
    );
    assert!(
        reasons(&mut bad)[0]
            .1
            .contains("rejected its configuration")
    );
}

#[test]
fn accept_rules_refuse_and_route() {
    let config = "max-size = 1000\nmime = [\"image/*\"]\n[[route]]\nmime = \"image/*\"\ndir = \"Pictures\"\n";
    let mut host = host_with(
        &["accept-rules"],
        Limits::default(),
        &[("accept-rules", config)],
    );
    let answer = |host: &mut PluginHost, size, mime| {
        host.on_transfer(&node(), &peer("p"), &file(size, mime, None))
            .map(|d| d.answer)
    };
    assert_eq!(
        answer(&mut host, 10, "image/png"),
        Some(AcceptAnswer::Accept {
            dir: Some("Pictures".into())
        })
    );
    assert!(matches!(
        answer(&mut host, 5000, "image/png"),
        Some(AcceptAnswer::Reject { reason }) if reason.contains("too large")
    ));
    assert!(matches!(
        answer(&mut host, 10, "text/plain"),
        Some(AcceptAnswer::Reject { reason }) if reason.contains("text/plain")
    ));
}

#[test]
fn smallest_first_orders_the_queue_round_robin() {
    let mut host = host(&["smallest-first"], Limits::default());
    let queue = [queued(1, 2, 900), queued(2, 2, 10), queued(3, 3, 50)];
    let order = host
        .schedule(&node(), &queue, &[device(2), device(3)])
        .expect("an order")
        .answer;
    assert_eq!(
        order,
        [
            TransferId([2; 16]),
            TransferId([3; 16]),
            TransferId([1; 16])
        ]
    );
}

#[test]
fn portable_modes_keep_read_only_and_executable_and_never_setuid() {
    let mut host = host(&["portable-modes"], Limits::default());
    let mode = |host: &mut PluginHost, m| {
        host.map_mode(&node(), &file(1, "x/y", Some(m)))
            .map(|d| d.answer)
    };
    assert_eq!(mode(&mut host, 0o4755), Some(0o755));
    assert_eq!(mode(&mut host, 0o600), Some(0o644));
    assert_eq!(mode(&mut host, 0o400), Some(0o444));
}

#[test]
fn the_first_plugin_with_an_opinion_decides() {
    // portable-modes has no opinion about offers; trust-on-offer has.
    let mut host = host(&["portable-modes", "trust-on-offer"], Limits::default());
    assert_eq!(
        host.on_offer(&node(), &peer("p")).unwrap().plugin,
        "trust-on-offer"
    );
    assert_eq!(
        host.map_mode(&node(), &file(1, "x/y", Some(0o700)))
            .unwrap()
            .plugin,
        "portable-modes"
    );
}

#[test]
fn a_sidecar_toml_beside_the_plugin_is_its_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        components().join("allowlist.wasm"),
        dir.path().join("allowlist.wasm"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("allowlist.toml"),
        format!("devices = [\"{}\"]\n", device(2)),
    )
    .unwrap();
    let settings = Settings {
        dir: dir.path().to_path_buf(),
        order: None,
        config: Default::default(),
        limits: Limits::default(),
    };
    let mut host = PluginHost::load(&settings).unwrap();
    assert_eq!(
        host.on_offer(&node(), &peer("x")).map(|d| d.answer),
        Some(TrustAnswer::Trust)
    );
}

#[test]
fn no_plugins_no_opinions() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        dir: dir.path().join("absent"),
        order: None,
        config: Default::default(),
        limits: Limits::default(),
    };
    let mut host = PluginHost::load(&settings).unwrap();
    assert!(host.describe().is_empty());
    assert_eq!(host.on_offer(&node(), &peer("x")), None);
    assert!(host.take_disabled().is_empty());
}
