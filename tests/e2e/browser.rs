//! A browser tab as a peer (spec 3.5): headless Chromium (Debian's `chromium`, driven by
//! Playwright's `playwright-core`, tests/web/driver.mjs) in one namespace of a test LAN opens
//! the page an fsnode serves from another, gets trusted like any device, sends and receives
//! 20 MiB byte-identical, and resumes a send after the tab is reloaded mid-transfer.
//!
//! Needs `chromium` (Debian) and `playwright-core` in `FSNODE_PLAYWRIGHT_DIR` (default
//! `~/.cache/fsnode/playwright`); `./test.sh` installs both.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use fsnode_testkit::Lan;
use serde_json::Value;

use crate::support::{Node, wait_for};
use crate::transfer::{digest, random_file, received};

const PORT: &str = "4780";
const SIZE: usize = 20 * 1024 * 1024;

fn playwright_dir() -> PathBuf {
    std::env::var_os("FSNODE_PLAYWRIGHT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/fsnode/playwright")
        })
}

/// The driver process: commands on stdin, one JSON answer per line on stdout.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
}

impl Browser {
    fn start(lan: &Lan, host: usize, url: &str, work: &Path) -> Browser {
        let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/web/driver.mjs");
        let playwright = playwright_dir();
        assert!(
            playwright.join("node_modules/playwright-core").exists(),
            "playwright-core is not installed in {} (./test.sh installs it: npm install --prefix DIR playwright-core)",
            playwright.display()
        );
        assert!(
            Path::new("/usr/bin/chromium").exists(),
            "Debian's chromium is not installed (./test.sh installs it)"
        );
        let mut child = lan
            .host(host)
            .command("node")
            .arg(driver)
            .env("FSNODE_URL", url)
            .env("PLAYWRIGHT_DIR", &playwright)
            .env("WORK_DIR", work)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting node with the browser driver");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Browser {
            child,
            stdin,
            answers,
        }
    }

    /// Sends one command and waits (bounded) for its answer, which must be `ok`.
    fn ask(&mut self, command: &str, timeout: Duration) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + timeout;
        let line = match self
            .answers
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("`{command}`: no answer within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("`{command}`: the driver exited"),
        };
        let answer: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(answer["ok"], true, "`{command}`: {answer:#}");
        answer
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rate(bytes: usize, ms: u64) -> String {
    format!("{:.1} MB/s", bytes as f64 / 1e6 / (ms.max(1) as f64 / 1e3))
}

#[test]
fn a_chromium_tab_is_trusted_then_sends_receives_and_resumes_after_a_reload() {
    let lan = Lan::new(2).unwrap();
    let node = Node::start(&lan, 0, "depot", &["--port", PORT]);
    // Chromium gathers no ICE candidate without a default route; an unused address on the
    // test bridge gives it one (its candidate is then hidden as `<uuid>.local`, and the node
    // must reach it through peer-reflexive candidates).
    let gateway = format!("{}", lan.host(0).addr())
        .rsplit_once('.')
        .unwrap()
        .0
        .to_owned()
        + ".254";
    let out = lan
        .host(1)
        .command("ip")
        .args(["route", "add", "default", "via", &gateway])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let work = tempfile::tempdir().unwrap();
    let url = format!("http://{}:{PORT}/", lan.host(0).addr());
    let mut browser = Browser::start(&lan, 1, &url, work.path());

    // The page shows its id and the pair's verification code; the node knows it from `hello`
    // and lists it untrusted; the page says what to type.
    let identity = browser.ask("id", Duration::from_secs(30));
    let id = identity["id"].as_str().unwrap().to_owned();
    assert_eq!(identity["node"], "depot");
    browser.ask("state untrusted 30", Duration::from_secs(35));
    wait_for(
        "the node lists the browser",
        Duration::from_secs(10),
        || node.peer(&id).is_some(),
    );
    let trusted = node.json(&["trust", "add", &id[..12], "--json"]);
    let code = trusted.to_string();
    assert!(
        code.contains(identity["code"].as_str().unwrap()),
        "the node's verification code {trusted} differs from the page's {}",
        identity["code"]
    );
    let connected = Instant::now();
    browser.ask("state connected 30", Duration::from_secs(35));
    eprintln!(
        "browser: connected {:?} after trust add",
        connected.elapsed()
    );
    wait_for(
        "the node shows the browser connected",
        Duration::from_secs(10),
        || node.connection(&id) == "connected",
    );

    // Browser -> node: 20 MiB, byte-identical.
    let files = tempfile::tempdir().unwrap();
    let up = random_file(files.path(), "from-phone.bin", SIZE, 16);
    let sent = browser.ask(
        &format!("upload {}", up.display()),
        Duration::from_secs(120),
    );
    let ms = sent["ms"].as_u64().unwrap();
    eprintln!("browser: sent 20 MiB in {ms} ms ({})", rate(SIZE, ms));
    wait_for("the node has the file", Duration::from_secs(10), || {
        received(&node, "from-phone.bin").exists()
    });
    assert_eq!(digest(&received(&node, "from-phone.bin")), digest(&up));

    // Node -> browser: `fsnode send --to` the browser; verified, then saved from the page.
    let down = random_file(files.path(), "to-phone.bin", SIZE, 17);
    let out = node
        .home
        .run(&["send", down.to_str().unwrap(), "--to", &id[..12]])
        .unwrap();
    assert!(out.success(), "{out:?}");
    let saved = work.path().join("saved.bin");
    let got = browser.ask(
        &format!("download to-phone.bin {}", saved.display()),
        Duration::from_secs(120),
    );
    let ms = got["ms"].as_u64().unwrap();
    eprintln!("browser: received 20 MiB (verified, stored) within {ms} ms of asking");
    assert_eq!(got["suggested"], "to-phone.bin");
    assert_eq!(digest(&saved), digest(&down));
    let memory = browser.ask("memory", Duration::from_secs(10));
    eprintln!("browser: JS heap in use {} bytes", memory["jsHeap"]);

    // Resume: the tab is reloaded mid-send (the link is slowed so the send takes seconds),
    // the same file picked again continues where the node's `.part` ends.
    lan.shape_rate(1, "40mbit").unwrap();
    let again = random_file(files.path(), "resumed.bin", SIZE, 18);
    let resumed = browser.ask(
        &format!("upload-reload {} 0.3", again.display()),
        Duration::from_secs(120),
    );
    lan.clear_shape(1).unwrap();
    eprintln!("browser: resume {resumed}");
    assert!(
        resumed["paused"]
            .as_str()
            .unwrap()
            .contains("pick the same file again"),
        "{resumed}"
    );
    assert!(
        resumed["meta"].as_str().unwrap().contains("resumed at"),
        "{resumed}"
    );
    wait_for(
        "the node has the resumed file",
        Duration::from_secs(10),
        || received(&node, "resumed.bin").exists(),
    );
    assert_eq!(digest(&received(&node, "resumed.bin")), digest(&again));
    let leftovers: Vec<_> = std::fs::read_dir(node.home.path().join("received"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("resumed"))
        .collect();
    assert_eq!(
        leftovers,
        ["resumed.bin"],
        "one file, no duplicate, no .part"
    );

    // The page at 360 px: its main elements are there and nothing overflows.
    let shot = std::env::var_os("FSNODE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.path().join("page.png"));
    let checks = browser.ask(
        &format!("screenshot {}", shot.display()),
        Duration::from_secs(20),
    )["checks"]
        .clone();
    assert_eq!(checks["nodeName"], "depot", "{checks}");
    assert_eq!(checks["state"], "connected", "{checks}");
    for element in ["deviceIdVisible", "codeVisible", "dropVisible"] {
        assert_eq!(checks[element], true, "{element}: {checks}");
    }
    assert_eq!(checks["sends"], 2, "{checks}");
    assert_eq!(checks["receives"], 1, "{checks}");
    assert!(checks["scrollWidth"].as_u64().unwrap() <= 360, "{checks}");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
}
