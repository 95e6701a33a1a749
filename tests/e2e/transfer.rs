//! File transfer end to end: real nodes, real data channels, files compared byte for byte.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fsnode_testkit::Lan;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{Node, trusting_pair, wait_for};

/// A file of `size` pseudo-random bytes (seeded, so failures reproduce).
fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(size);
    let path = dir.join(name);
    fs::write(&path, &data).unwrap();
    path
}

fn digest(path: &Path) -> Vec<u8> {
    Sha256::digest(fs::read(path).unwrap()).to_vec()
}

fn transfers(node: &Node) -> Vec<Value> {
    node.json(&["transfers", "--json"])["transfers"]
        .as_array()
        .unwrap()
        .clone()
}

fn connected_pair(lan: &Lan) -> (Node, Node, String, String) {
    let (a, b, a_id, b_id) = trusting_pair(lan);
    wait_for("connected", Duration::from_secs(10), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    (a, b, a_id, b_id)
}

fn received(node: &Node, name: &str) -> PathBuf {
    node.home.path().join("received").join(name)
}

#[test]
fn a_64_mib_file_arrives_byte_identical_with_mode_and_mtime() {
    let lan = Lan::new(2).unwrap();
    let (a, b, _a_id, b_id) = connected_pair(&lan);
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "big.bin", 64 * 1024 * 1024 + 123, 1);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o750)).unwrap();
    let out = a
        .home
        .run(&[
            "send",
            file.to_str().unwrap(),
            "--to",
            &b_id[..10],
            "--wait",
            "--json",
        ])
        .unwrap();
    assert!(out.success(), "{out:?}");
    let target = received(&b, "big.bin");
    wait_for("the file is complete on B", Duration::from_secs(60), || {
        target.exists()
    });
    assert_eq!(digest(&target), digest(&file));
    let meta = fs::metadata(&target).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o750 & !0o022);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.mtime(),
        fs::metadata(&file).unwrap().mtime(),
        "mtime kept"
    );
    // No .part left behind; both sides say completed.
    let leftovers: Vec<_> = fs::read_dir(b.home.path().join("received"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(leftovers, ["big.bin"]);
    wait_for("B's journal says completed", Duration::from_secs(5), || {
        transfers(&b).iter().any(|t| t["status"] == "completed")
    });
    assert_eq!(transfers(&a)[0]["status"], "completed");
    let verify = b.home.run(&["journal", "verify"]).unwrap();
    assert!(verify.success(), "{verify:?}");
}
