//! fsnode as a LocalSend peer (PROTOCOL.md section 7), against `localsendd` (PyPI, a LocalSend
//! v2.2 daemon fsnode's authors did not write), each in its own namespace of a test LAN: both
//! directions under fsnode's trust, and the refusals (an untrusted sender, a wrong SHA-256, a
//! cancel mid-upload, a file over the free space).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fsnode_testkit::{Background, Lan, NodeHome, Output, run_bounded};
use serde_json::Value;

use crate::support::{Node, wait_for};

/// localsendd on host `i`: its own state, config and runtime directories, so it never
/// touches the machine's, and an HTTPS server on the LocalSend port.
struct LocalSendd {
    daemon: Background,
    namespace: String,
    dir: tempfile::TempDir,
}

impl LocalSendd {
    fn start(lan: &Lan, i: usize, alias: &str) -> LocalSendd {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("downloads")).unwrap();
        let host = lan.host(i);
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", host.name(), "python3", "-m", "localsendd"])
            .args([
                "--alias",
                alias,
                "--port",
                "53317",
                "--unattended",
                "--encryption",
            ])
            .arg("--download-dir")
            .arg(dir.path().join("downloads"))
            .arg("--socket")
            .arg(dir.path().join("ctl.sock"))
            .args(["--log-level", "debug", "--no-log-time"]);
        Self::env(&mut command, dir.path());
        let daemon = Background::spawn(&mut command).unwrap();
        // Its start line (on stderr) carries its fingerprint, the SHA-256 of its certificate.
        wait_stderr(&daemon, "fingerprint=").unwrap();
        LocalSendd {
            daemon,
            namespace: host.name().to_owned(),
            dir,
        }
    }

    fn env(command: &mut Command, dir: &Path) {
        command
            .env("XDG_STATE_HOME", dir.join("state"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_RUNTIME_DIR", dir)
            .env("HOME", dir)
            .env_remove("LOCALSEND_PIN")
            .env_remove("LOCALSEND_ALIAS");
    }

    fn fingerprint(&self) -> String {
        let text = self.daemon.stderr_text();
        let start = text.find("fingerprint=").expect("start line") + "fingerprint=".len();
        text[start..start + 64].to_ascii_lowercase()
    }

    fn id(&self) -> String {
        format!("ls:{}", self.fingerprint())
    }

    fn downloads(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    /// `localsendctl ARGS`, bounded.
    fn ctl(&self, args: &[&str], timeout: Duration) -> Output {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace, "python3", "-c"])
            .arg("import sys; from localsendd.cli import main; sys.exit(main())")
            .arg("--socket")
            .arg(self.dir.path().join("ctl.sock"))
            .args(args);
        Self::env(&mut command, self.dir.path());
        run_bounded(&mut command, timeout).unwrap()
    }

    /// Sends `file` to `to` and waits for the result line (`Last result: KIND …`).
    fn send(&self, file: &Path, to: &str) -> String {
        let out = self.ctl(
            &[
                "send",
                file.to_str().unwrap(),
                "--to",
                to,
                "--wait",
                "--quiet",
            ],
            Duration::from_secs(60),
        );
        out.stdout
    }
}

fn wait_stderr(daemon: &Background, needle: &str) -> anyhow::Result<String> {
    for _ in 0..400 {
        let text = daemon.stderr_text();
        if text.contains(needle) {
            return Ok(text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("no {needle:?} in {:?}", daemon.stderr_text())
}

fn write_file(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn transfers(node: &Node) -> Vec<Value> {
    node.json(&["transfers", "--json"])["transfers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn transfer_named<'a>(rows: &'a [Value], name: &str) -> Option<&'a Value> {
    rows.iter().find(|t| t["name"] == name)
}

/// Files under `dir`, recursively (names relative to it).
fn files_in(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_in(&path));
        } else {
            found.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    found
}

#[test]
fn localsendd_sends_to_fsnode_and_receives_from_it_under_fsnodes_trust() {
    let lan = Lan::new(2).unwrap();
    let node = Node::start(&lan, 0, "gateway", &["--localsend"]);
    let phone = LocalSendd::start(&lan, 1, "phone");
    let phone_id = phone.id();
    let node_ip = lan.host(0).addr().to_string();
    let work = tempfile::tempdir().unwrap();

    // Multicast discovery: the phone's announcement reaches fsnode (an untrusted device it
    // lists), and fsnode's answer reaches the phone.
    wait_for("fsnode lists the phone", Duration::from_secs(15), || {
        node.peer(&phone_id).is_some()
    });
    let listed = phone.ctl(&["devices", "--json"], Duration::from_secs(10));
    let devices: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["alias"] == "gateway" && d["deviceType"] == "headless"),
        "the phone lists fsnode: {devices}"
    );

    // Untrusted: refused (403), recorded as asking, nothing stored.
    let (photo, photo_data) = write_file(work.path(), "photo.jpg", 300_000);
    let result = phone.send(&photo, &node_ip);
    assert!(result.contains("declined"), "{result}");
    let asked = node.json(&["trust", "list", "--json"]);
    assert!(
        asked.to_string().contains(&phone_id),
        "the phone asks to be trusted: {asked}"
    );
    assert!(files_in(&node.home.path().join("received")).is_empty());

    // Trusted once (`trust add ls:<first digits>`): the file arrives, verified and journaled.
    let prefix = &phone_id[..14];
    let trusted = node.home.run(&["trust", "add", prefix]).unwrap();
    assert!(trusted.success(), "{trusted:?}");
    let result = phone.send(&photo, &node_ip);
    assert!(result.contains("sent"), "{result}");
    let received = node.home.path().join("received/photo.jpg");
    assert_eq!(std::fs::read(&received).unwrap(), photo_data);
    let rows = transfers(&node);
    let row = transfer_named(&rows, "photo.jpg").expect("the transfer is listed");
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["peer"], phone_id.as_str());
    let kinds: Vec<String> = node
        .events()
        .iter()
        .filter(|e| e["peer"] == phone_id.as_str() || e["id"] == row["id"])
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    for kind in ["TransferQueued", "TransferAccepted", "TransferCompleted"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }

    // fsnode sends to the phone: queued as for any device, delivered to the phone's server.
    let (doc, doc_data) = write_file(work.path(), "report.pdf", 2 * 1024 * 1024 + 17);
    let sent = node
        .home
        .run(&["send", doc.to_str().unwrap(), "--to", prefix, "--wait"])
        .unwrap();
    assert!(sent.success(), "{sent:?}");
    wait_for("the phone has the file", Duration::from_secs(20), || {
        std::fs::read(phone.downloads().join("report.pdf")).is_ok_and(|d| d == doc_data)
    });

    // A wrong SHA-256 is refused before the rename: a sender on the phone's address (so the
    // fingerprint check passes) announcing a hash that is not the file's.
    let fingerprint = phone.fingerprint();
    let script = format!(
        r#"
import http.client, json, ssl
ctx = ssl._create_unverified_context()
def post(path, body, ctype):
    c = http.client.HTTPSConnection("{node_ip}", 53317, context=ctx, timeout=20)
    c.request("POST", path, body=body, headers={{"Content-Type": ctype}})
    r = c.getresponse(); data = r.read(); c.close(); return r.status, data
info = {{"alias": "phone", "version": "2.1", "deviceModel": None, "deviceType": "mobile",
        "fingerprint": "{fingerprint}", "port": 53317, "protocol": "https", "download": False}}
files = {{"f1": {{"id": "f1", "fileName": "tampered.bin", "size": 5, "fileType": "application/octet-stream",
                 "sha256": "00" * 32}}}}
status, data = post("/api/localsend/v2/prepare-upload", json.dumps({{"info": info, "files": files}}), "application/json")
print("prepare", status)
answer = json.loads(data)
status, _ = post("/api/localsend/v2/upload?sessionId=%s&fileId=f1&token=%s" % (answer["sessionId"], answer["files"]["f1"]), b"hello", "application/octet-stream")
print("upload", status)
"#
    );
    let mut python = Command::new("ip");
    python
        .args(["netns", "exec", lan.host(1).name(), "python3", "-c"])
        .arg(&script);
    let out = run_bounded(&mut python, Duration::from_secs(30)).unwrap();
    assert!(out.stdout.contains("prepare 200"), "{out:?}");
    assert!(out.stdout.contains("upload 422"), "{out:?}");
    let rows = transfers(&node);
    let row = transfer_named(&rows, "tampered.bin").unwrap();
    assert_eq!(row["status"], "failed", "{row}");
    assert!(
        !files_in(&node.home.path().join("received"))
            .iter()
            .any(|f| f.starts_with("tampered")),
        "neither the file nor its .part is left"
    );

    // A cancel mid-upload: a slow link, then the phone's own cancel.
    lan.shape_rate(1, "4mbit").unwrap();
    let (big, _) = write_file(work.path(), "video.mp4", 8 * 1024 * 1024);
    let mut sending = Command::new("ip");
    sending
        .args(["netns", "exec", lan.host(1).name(), "python3", "-c"])
        .arg("import sys; from localsendd.cli import main; sys.exit(main())")
        .arg("--socket")
        .arg(phone.dir.path().join("ctl.sock"))
        .args(["send", big.to_str().unwrap(), "--to", &node_ip]);
    LocalSendd::env(&mut sending, phone.dir.path());
    run_bounded(&mut sending, Duration::from_secs(10)).unwrap();
    wait_for("the upload is under way", Duration::from_secs(20), || {
        transfer_named(&transfers(&node), "video.mp4").is_some_and(|t| t["status"] == "active")
    });
    std::thread::sleep(Duration::from_millis(500));
    let cancelled = phone.ctl(&["cancel"], Duration::from_secs(10));
    assert!(cancelled.success(), "{cancelled:?}");
    wait_for(
        "the upload ends unfinished",
        Duration::from_secs(15),
        || {
            transfer_named(&transfers(&node), "video.mp4")
                .is_some_and(|t| t["status"] == "cancelled" || t["status"] == "failed")
        },
    );
    lan.clear_shape(1).unwrap();
    wait_for("its .part is gone", Duration::from_secs(5), || {
        !files_in(&node.home.path().join("received"))
            .iter()
            .any(|f| f.starts_with("video"))
    });
}

#[test]
fn a_localsend_file_over_the_free_space_is_refused_before_any_upload() {
    let lan = Lan::new(2).unwrap();
    // LocalSend switched on in the config file (`localsend = true`), the receive directory on
    // a 4 MiB tmpfs.
    let mut home = NodeHome::in_host(crate::fsnode_bin(), lan.host(0)).unwrap();
    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(home.path().join("config/fsnode.toml"), "localsend = true\n").unwrap();
    home.start_with_small_disk(
        &["--name", "gateway", "--interface", "eth0"],
        4 * 1024 * 1024,
    )
    .unwrap();
    let node = Node {
        home,
        name: "gateway".into(),
    };
    node.wait_ready();
    let phone = LocalSendd::start(&lan, 1, "phone");
    let phone_id = phone.id();
    let trusted = node.home.run(&["trust", "add", &phone_id]).unwrap();
    assert!(trusted.success(), "{trusted:?}");
    let work = tempfile::tempdir().unwrap();
    let (big, _) = write_file(work.path(), "backup.tar", 6 * 1024 * 1024);
    let result = phone.send(&big, &lan.host(0).addr().to_string());
    assert!(result.contains("507"), "{result}");
    let rows = transfers(&node);
    let row = transfer_named(&rows, "backup.tar").expect("the refusal is journaled");
    assert_eq!(row["status"], "rejected", "{row}");
    assert!(
        row["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no space"),
        "{row}"
    );
    let receive = node
        .home
        .daemon_root(&node.home.path().join("received"))
        .unwrap();
    assert!(files_in(&receive).is_empty(), "{:?}", files_in(&receive));
}

/// Not a test: prints how long localsendd takes to send one file to fsnode and, in the same
/// run, to another localsendd (the baseline), and the ratio. BENCHMARKS.md ("LocalSend").
#[test]
#[ignore = "a benchmark: prints figures, asserts nothing about time; run by hand"]
fn localsend_receive_rate_against_localsendd() {
    let mib: usize = std::env::var("LOCALSEND_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let lan = Lan::new(3).unwrap();
    let node = Node::start(&lan, 0, "gateway", &["--localsend"]);
    let phone = LocalSendd::start(&lan, 1, "phone");
    let other = LocalSendd::start(&lan, 2, "laptop");
    assert!(
        node.home
            .run(&["trust", "add", &phone.id()])
            .unwrap()
            .success()
    );
    let work = tempfile::tempdir().unwrap();
    let (file, _) = write_file(work.path(), "bench.bin", mib * 1024 * 1024);
    let timed = |to: &str| {
        let started = std::time::Instant::now();
        let result = phone.send(&file, to);
        assert!(result.contains("sent"), "{result}");
        started.elapsed()
    };
    // Each receiver once unmeasured (discovery, pinning, first connections), then measured.
    let baseline_to = lan.host(2).addr().to_string();
    let node_to = lan.host(0).addr().to_string();
    timed(&baseline_to);
    timed(&node_to);
    let baseline = timed(&baseline_to);
    let fsnode = timed(&node_to);
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!(
        "localsendd -> localsendd: {mib} MiB in {:.2} s ({:.1} MiB/s); localsendd -> fsnode: {:.2} s ({:.1} MiB/s); fsnode/baseline rate {:.2}",
        baseline.as_secs_f64(),
        rate(baseline),
        fsnode.as_secs_f64(),
        rate(fsnode),
        rate(fsnode) / rate(baseline)
    );
    let _ = other;
}
