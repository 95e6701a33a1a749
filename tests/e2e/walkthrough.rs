//! README's walkthrough, command by command, as an operator follows it: two machines run
//! `fsnode run`, list each other with `fsnode peers`, compare the verification code, trust
//! each other by id prefix, send a file; then each restarts (one with SIGTERM, one with
//! `kill -9`), they find each other again by themselves, and a second file goes through.

use std::fs;
use std::time::Duration;

use fsnode_testkit::Lan;
use serde_json::Value;

use crate::support::{Node, wait_for};

/// README: "`fsnode peers` on each lists the other within a few seconds".
const FEW_SECONDS: Duration = Duration::from_secs(5);

fn send_and_check(from: &Node, to: &Node, to_prefix: &str, name: &str, contents: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    fs::write(&file, contents).unwrap();
    let out = from
        .home
        .run(&["send", file.to_str().unwrap(), "--to", to_prefix, "--wait"])
        .unwrap();
    assert!(out.success(), "{out:?}");
    let arrived = to.home.path().join("received").join(name);
    assert_eq!(fs::read(&arrived).unwrap(), contents);
}

#[test]
fn the_readme_walkthrough_with_a_restart_of_each_node() {
    let lan = Lan::new(2).unwrap();
    // `fsnode run` on both (the default port).
    let mut a = Node::start(&lan, 0, "laptop", &[]);
    let mut b = Node::start(&lan, 1, "nas", &["--device-type", "server"]);
    let (a_id, b_id) = (a.id(), b.id());
    // `fsnode peers` on each lists the other.
    wait_for("laptop lists nas", FEW_SECONDS, || a.peer(&b_id).is_some());
    wait_for("nas lists laptop", FEW_SECONDS, || b.peer(&a_id).is_some());
    let listed = a.home.run(&["peers"]).unwrap();
    assert!(listed.stdout.contains("nas"), "{}", listed.stdout);
    // The same verification code on both screens.
    let code = a.peer(&b_id).unwrap()["verification_code"].clone();
    assert_eq!(b.peer(&a_id).unwrap()["verification_code"], code);
    // `fsnode trust add <first characters of the other's id>` on each.
    let (a_prefix, b_prefix) = (&a_id[..12], &b_id[..12]);
    let trusted = a.home.run(&["trust", "add", b_prefix]).unwrap();
    assert!(
        trusted.success() && trusted.stdout.contains(code.as_str().unwrap()),
        "{trusted:?}"
    );
    assert!(b.home.run(&["trust", "add", a_prefix]).unwrap().success());
    wait_for("connected", Duration::from_secs(10), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    send_and_check(&a, &b, b_prefix, "notes.txt", b"first file\n");

    // The nas restarts gracefully, the laptop is killed and started again.
    b.stop();
    b.restart(&["--device-type", "server"]);
    a.kill();
    a.restart(&[]);
    let took = wait_for("found each other again", Duration::from_secs(10), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    eprintln!("reconnected {took:?} after the second restart");
    // Same port as before (the default): the page's URL did not change.
    let id: Value = a.json(&["id", "--json"]);
    assert_eq!(id["port"], 7452);
    send_and_check(&a, &b, b_prefix, "photo.jpg", &[7u8; 300_000]);
    send_and_check(&b, &a, a_prefix, "reply.txt", b"and back\n");
}
