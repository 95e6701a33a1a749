//! Policy plugins in a running node: a plugin's answer changes what the node does, hostile
//! plugins are disabled within their budgets while the node keeps working, and the journal
//! says why. (The default without plugins, refusing an untrusted offer, is
//! `connection::an_untrusting_peer_refuses_offers_lists_the_asker_and_connects_once_it_trusts`.)

use std::time::Duration;

use fsnode::policy::build;
use fsnode_testkit::{Lan, NodeHome};
use serde_json::Value;

use crate::fsnode_bin;
use crate::support::{Node, wait_for};

/// Starts a node whose plugin directory holds `plugins` (built from `plugins/`).
fn start_with_plugins(lan: &Lan, i: usize, name: &str, plugins: &[&str]) -> Node {
    let components = build::repository_plugins().unwrap_or_else(|e| panic!("{e}"));
    let mut home = NodeHome::in_host(fsnode_bin(), lan.host(i)).unwrap();
    let dir = home.path().join("data").join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for plugin in plugins {
        let file = format!("{plugin}.wasm");
        std::fs::copy(components.join(&file), dir.join(&file)).unwrap();
    }
    home.start(&["--name", name, "--interface", "eth0"])
        .unwrap();
    let node = Node {
        home,
        name: name.into(),
    };
    node.wait_ready();
    node
}

fn decisions(node: &Node, plugin: &str) -> Vec<Value> {
    node.events()
        .into_iter()
        .filter(|e| e["type"] == "PolicyDecision" && e["plugin"] == plugin)
        .collect()
}

/// A trusts B, B does not trust A: with `trust-on-offer` B trusts A on its offer, journals
/// why, and they connect.
#[test]
fn trust_on_offer_trusts_an_untrusted_offer_and_the_peers_connect() {
    let lan = Lan::new(2).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let b = start_with_plugins(&lan, 1, "beta", &["trust-on-offer"]);
    let (a_id, b_id) = (a.id(), b.id());
    wait_for("A sees B", Duration::from_secs(5), || {
        a.peer(&b_id).is_some()
    });
    a.json(&["trust", "add", &b_id, "--json"]);
    wait_for("connected by B's plugin", Duration::from_secs(10), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    let trusted = b.json(&["trust", "list", "--json"]);
    assert!(
        trusted["trusted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == a_id.as_str()),
        "{trusted}"
    );
    let by_plugin = b
        .events()
        .into_iter()
        .find(|e| e["type"] == "PeerAuthorized" && e["peer"] == a_id.as_str());
    assert_eq!(
        by_plugin.expect("A authorized")["by"]["policy"]["plugin"],
        "trust-on-offer"
    );
    let decided = decisions(&b, "trust-on-offer");
    assert!(
        decided.iter().any(|d| d["answer"] == "trust"
            && d["question"]
                .as_str()
                .unwrap()
                .starts_with(&format!("on-offer {a_id}"))),
        "{decided:?}"
    );
    assert_eq!(b.count("AuthorizationRequested", &a_id), 0);
    let list = b.json(&["plugins", "list", "--json"]);
    assert_eq!(list[0]["name"], "trust-on-offer");
    assert_eq!(list[0]["version"], "0.1.0");
    assert!(list[0]["disabled"].is_null(), "{list}");
}

/// Plugins that loop, hoard memory and trap come first in B's order (names sort before
/// `trust-on-offer`): each is disabled within its budget, the journal says why, and B still
/// answers, decides with the next plugin, and connects.
#[test]
fn hostile_plugins_are_disabled_and_the_node_keeps_working() {
    let lan = Lan::new(2).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let b = start_with_plugins(&lan, 1, "beta", &["hog", "spin", "trap", "trust-on-offer"]);
    let (a_id, b_id) = (a.id(), b.id());
    wait_for("A sees B", Duration::from_secs(5), || {
        a.peer(&b_id).is_some()
    });
    a.json(&["trust", "add", &b_id, "--json"]);
    wait_for(
        "connected despite hostile plugins",
        Duration::from_secs(15),
        || a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected",
    );
    let disabled: Vec<(String, String)> = b
        .events()
        .into_iter()
        .filter(|e| e["type"] == "PluginDisabled")
        .map(|e| {
            (
                e["plugin"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let reason = |plugin: &str| {
        disabled
            .iter()
            .find(|(p, _)| p == plugin)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{plugin} not disabled: {disabled:?}"))
    };
    assert!(reason("spin").contains("fuel"), "{disabled:?}");
    assert!(reason("hog").contains("memory"), "{disabled:?}");
    assert!(reason("trap").contains("trapped"), "{disabled:?}");
    assert_eq!(disabled.len(), 3, "each disabled once: {disabled:?}");
    let list = b.json(&["plugins", "list", "--json"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert!(
        rows[..3].iter().all(|r| r["disabled"].is_string()),
        "{list}"
    );
    assert!(rows[3]["disabled"].is_null(), "{list}");
    assert!(!decisions(&b, "trust-on-offer").is_empty());
}

/// `fsnode plugins build` of one of the repository's plugins: the component lands in `--out`
/// and the plugin's source tree stays clean (no `plugins/NAME/target/` left in a work tree).
/// Cargo's build directory is the one `CARGO_TARGET_DIR` names — here the one the plugin tests
/// already built the plugins in, so the build is quick — else the home's cache (`dirs` tests).
/// A toolchain without the wasm target gets it through rustup (a stand-in `rustup` here, which
/// records what it was asked), with one line saying so.
#[test]
fn plugins_build_writes_the_component_and_leaves_the_source_tree_clean() {
    let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let source = repository.join("plugins/trust-on-offer");
    let home = NodeHome::new(fsnode_bin()).unwrap();
    let out = home.path().join("out");
    let fake_bin = home.path().join("bin");
    std::fs::create_dir_all(&fake_bin).unwrap();
    let asked = home.path().join("rustup-asked");
    let rustup = fake_bin.join("rustup");
    std::fs::write(
        &rustup,
        format!(
            "#!/bin/sh\nif [ \"$1 $2\" = \"target list\" ]; then echo x86_64-unknown-linux-gnu; exit 0; fi\necho \"$@\" >> {}\n",
            asked.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rustup, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        fake_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let built = home
        .command(&[
            "plugins",
            "build",
            source.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .env("CARGO_TARGET_DIR", repository.join("target/plugins"))
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&built.stdout);
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "{built:?}");
    assert_eq!(
        std::fs::read_to_string(&asked).unwrap().trim(),
        "target add wasm32-unknown-unknown"
    );
    assert!(
        stderr.contains("installing the Rust target wasm32-unknown-unknown"),
        "{stderr}"
    );
    assert!(stdout.contains("trust-on-offer.wasm"), "{stdout}");
    let bytes = std::fs::read(out.join("trust-on-offer.wasm")).unwrap();
    assert_eq!(&bytes[..4], b"\0asm", "a wasm binary");
    assert!(
        !source.join("target").exists(),
        "nothing is left in the plugin's source tree"
    );
    assert!(!home.path().join("cache").exists(), "CARGO_TARGET_DIR wins");
}

/// A plugin copied into a running node's plugin directory is loaded within seconds, without a
/// restart: `plugins list` shows it, the journal records what was loaded, and its decisions
/// apply to the next file. `plugins reload` does the same at once and says what it loaded.
#[test]
fn a_plugin_copied_into_a_running_node_is_loaded_and_decides() {
    let components = build::repository_plugins().unwrap_or_else(|e| panic!("{e}"));
    let lan = Lan::new(2).unwrap();
    let (a, b, _a_id, b_id) = crate::transfer::connected_pair(&lan);
    let listed = |node: &Node| -> Vec<Value> {
        node.json(&["plugins", "list", "--json"])
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(listed(&b).is_empty());
    let dir = b.home.path().join("data").join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("accept-rules.toml"), "max-size = 1000\n").unwrap();
    std::fs::copy(
        components.join("accept-rules.wasm"),
        dir.join("accept-rules.wasm"),
    )
    .unwrap();
    let took = wait_for(
        "the running node loads the new plugin",
        Duration::from_secs(15),
        || {
            listed(&b)
                .iter()
                .any(|p| p["name"] == "accept-rules" && p["version"].is_string())
        },
    );
    eprintln!("loaded {took:?} after the copy");
    let loaded = b
        .events()
        .into_iter()
        .rev()
        .find(|e| e["type"] == "PluginsLoaded")
        .expect("the load is journaled");
    assert_eq!(loaded["plugins"], serde_json::json!(["accept-rules"]));

    // Its decisions apply: a file over its limit is refused, with its reason.
    let src = tempfile::tempdir().unwrap();
    let big = src.path().join("big.txt");
    std::fs::write(&big, vec![b'x'; 5000]).unwrap();
    let sent = a
        .home
        .run(&["send", big.to_str().unwrap(), "--to", &b_id, "--wait"])
        .unwrap();
    assert_eq!(sent.code, Some(7), "{sent:?}");
    assert!(sent.stdout.contains("too large"), "{sent:?}");
    assert!(!decisions(&b, "accept-rules").is_empty());

    // Removed and reloaded by hand: the built-in policy decides again, at once.
    std::fs::remove_file(dir.join("accept-rules.wasm")).unwrap();
    let reloaded = b.home.run(&["plugins", "reload", "--json"]).unwrap();
    assert!(reloaded.success(), "{reloaded:?}");
    assert_eq!(reloaded.stdout.trim(), "[]");
    let sent = a
        .home
        .run(&["send", big.to_str().unwrap(), "--to", &b_id, "--wait"])
        .unwrap();
    assert!(sent.success(), "{sent:?}");
}
