//! A browser tab as a peer (spec 3.5): headless Chromium (Debian's `chromium`, driven by
//! Playwright's `playwright-core`, tests/web/driver.mjs) in one namespace of a test LAN opens
//! the page an fsnode serves from another, gets trusted like any device, sends and receives
//! 20 MiB byte-identical, sends a folder picked on its folder input, resumes a send after the tab
//! is reloaded mid-transfer, and has its `.local` candidate resolved by the node; a second test
//! receives a large file (128 MiB; `FSNODE_BROWSER_RECEIVE_MIB=1024` for the BENCHMARKS.md
//! figure) and checks that the tab's memory does not grow with it.
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

/// A node on host 0 and the page open in Chromium on host 1, trusted and connected: the
/// browser's device id, once the page shows it, the node lists it and `trust add` matched the
/// page's verification code.
fn trusted_browser(lan: &Lan, work: &Path) -> (Node, Browser, String) {
    let node = Node::start(lan, 0, "depot", &["--port", PORT]);
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

    let url = format!("http://{}:{PORT}/", lan.host(0).addr());
    let mut browser = Browser::start(lan, 1, &url, work);

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
    (node, browser, id)
}

#[test]
fn a_chromium_tab_is_trusted_then_sends_receives_and_resumes_after_a_reload() {
    let lan = Lan::new(2).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (mut node, mut browser, id) = trusted_browser(&lan, work.path());

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

    // A folder picked on the page's folder input (`webkitdirectory`): every file arrives
    // byte-identical under the receive directory at its relative path, the folder's name
    // first, as the spec's name rules allow (an empty file and nested folders included).
    let album = files.path().join("album");
    std::fs::create_dir_all(album.join("sub/deeper")).unwrap();
    let mut folder_files = vec![
        random_file(&album, "cover.jpg", 300_000, 30),
        random_file(&album.join("sub"), "track 1.flac", 1_500_000, 31),
        random_file(&album.join("sub/deeper"), "notes.txt", 1_000, 32),
    ];
    std::fs::write(album.join("sub/empty.txt"), b"").unwrap();
    folder_files.push(album.join("sub/empty.txt"));
    let folder = browser.ask(
        &format!("upload-folder {}", album.display()),
        Duration::from_secs(120),
    );
    eprintln!("browser: folder {folder}");
    assert_eq!(
        folder["names"],
        serde_json::json!([
            "album/cover.jpg",
            "album/sub/deeper/notes.txt",
            "album/sub/empty.txt",
            "album/sub/track 1.flac"
        ])
    );
    for file in &folder_files {
        let relative = file.strip_prefix(files.path()).unwrap();
        let arrived = node.home.path().join("received").join(relative);
        wait_for(
            "the node has the folder's file",
            Duration::from_secs(10),
            || arrived.exists(),
        );
        assert_eq!(digest(&arrived), digest(file), "{}", relative.display());
    }

    // A file dropped on the drop zone (a synthesized drop: only files, no folder entries).
    browser.ask("drop dropped.bin 300000", Duration::from_secs(70));
    wait_for(
        "the node has the dropped file",
        Duration::from_secs(10),
        || received(&node, "dropped.bin").exists(),
    );
    let pattern: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        std::fs::read(received(&node, "dropped.bin")).unwrap(),
        pattern
    );

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
    assert_eq!(checks["sends"], 3 + folder_files.len(), "{checks}");
    assert_eq!(checks["receives"], 1, "{checks}");
    assert!(checks["scrollWidth"].as_u64().unwrap() <= 360, "{checks}");
    let desktop = &checks["desktop"];
    assert!(desktop["scrollWidth"].as_u64().unwrap() <= 1280, "{checks}");
    assert_eq!(desktop["dropVisible"], true, "{checks}");
    let column = desktop["mainWidth"].as_u64().unwrap();
    assert!((400..=800).contains(&column), "a readable column: {checks}");
    assert!(
        desktop["mainLeft"].as_u64().unwrap() > 200,
        "centred: {checks}"
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    // The id in 13 groups of 4, none broken across lines at 360 px, its text still the id,
    // with a Copy button; folders offered on this desktop browser; an icon; and finished rows
    // that say how long they took and at what rate.
    assert_eq!(checks["idGroups"], 13, "{checks}");
    assert_eq!(checks["idGroupsUnbroken"], true, "{checks}");
    assert_eq!(checks["idText"], id.as_str(), "{checks}");
    assert_eq!(checks["copyVisible"], true, "{checks}");
    assert_eq!(checks["folderPickerVisible"], true, "{checks}");
    assert_eq!(checks["favicon"], "/favicon.svg", "{checks}");
    for meta in ["finishedMeta", "receivedMeta"] {
        let text = checks[meta].as_str().unwrap();
        assert!(
            text.contains(" in ") && text.contains("/s average"),
            "{meta}: {checks}"
        );
    }
    assert_eq!(checks["clearSendsVisible"], true, "{checks}");

    // Chromium's host candidate is `<uuid>.local`; the node resolved it with its mDNS daemon
    // (on its `--interface` inside the test LAN) to the browser's address.
    let candidates = browser.ask("candidates", Duration::from_secs(10))["candidates"].clone();
    let local_name = candidates
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str()?.split_whitespace().nth(4))
        .find(|address| address.ends_with(".local"))
        .unwrap_or_else(|| panic!("no .local candidate from Chromium: {candidates}"))
        .to_ascii_lowercase();
    // "Clear finished" empties both lists (every transfer above finished), for good: a
    // reload shows nothing of them.
    let cleared = browser.ask("clear-finished", Duration::from_secs(40));
    for rows in [&cleared, &cleared["afterReload"]] {
        assert_eq!(rows["sends"], 0, "{cleared}");
        assert_eq!(rows["receives"], 0, "{cleared}");
        assert_eq!(rows["clearVisible"], false, "{cleared}");
    }

    // Revoking the browser's trust ends its session at once: the page says so within 2 s.
    let revoked_at = Instant::now();
    let out = node.home.run(&["trust", "remove", &id[..12]]).unwrap();
    assert!(out.success(), "{out:?}");
    browser.ask("state untrusted 2", Duration::from_secs(5));
    let took = revoked_at.elapsed();
    eprintln!("browser: shown untrusted {took:?} after trust remove");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_ne!(node.connection(&id), "connected");

    let log = node
        .home
        .stop_with(rustix::process::Signal::TERM, Duration::from_secs(10))
        .unwrap()
        .stderr;
    let browser_addr = lan.host(1).addr().to_string();
    assert!(
        log.lines().any(
            |line| line.contains("resolved a browser's .local ICE candidate")
                && line.contains(&local_name)
                && line.contains(&browser_addr)
        ),
        "the node did not resolve {local_name} to {browser_addr}:\n{log}"
    );
}

/// A file of `size` pseudo-random bytes written in pieces (a 1 GiB one never sits in the
/// test's memory); returns its SHA-256.
fn streamed_random_file(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut piece = Vec::with_capacity(1 << 20);
    let mut left = size;
    while left > 0 {
        piece.clear();
        while piece.len() < (1 << 20) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            piece.extend_from_slice(&state.to_le_bytes());
        }
        piece.truncate(left.min(1 << 20) as usize);
        hasher.update(&piece);
        out.write_all(&piece).unwrap();
        left -= piece.len() as u64;
    }
    out.flush().unwrap();
    hasher.finalize().to_vec()
}

/// The bytes of the files under the profile's `*.indexeddb.blob` directories.
fn indexeddb_blob_bytes(profile: &Path) -> u64 {
    fn walk(dir: &Path, inside_blobs: bool, total: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                let blobs = inside_blobs || path.to_string_lossy().ends_with(".indexeddb.blob");
                walk(&path, blobs, total);
            } else if kind.is_file() && inside_blobs {
                *total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    let mut total = 0;
    walk(profile, false, &mut total);
    total
}

/// A file's SHA-256, read in pieces.
fn streamed_digest(path: &Path) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hasher.finalize().to_vec()
}

/// The size the large-receive test uses: `FSNODE_BROWSER_RECEIVE_MIB` (1024 for the
/// BENCHMARKS.md figure), else a CI size large enough that a tab holding the file in memory
/// would exceed the bound below several times over.
fn large_receive_bytes() -> u64 {
    std::env::var("FSNODE_BROWSER_RECEIVE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(128)
        << 20
}

/// The most the tab's renderer may grow while receiving, whatever the file's size: chunks go
/// to IndexedDB (on disk) as they are verified, and the whole-file hash runs alongside.
/// Measured: 35 to 44 MiB of growth for 128 MiB to 1 GiB (BENCHMARKS.md), the garbage V8 lets
/// the data channel's buffers pile up to before it collects; the bound leaves room for a slow,
/// loaded CI machine and is still well below the 128 MiB a tab holding the file would add.
const RENDERER_GROWTH_BOUND: u64 = 80 << 20;

#[test]
fn a_chromium_tab_receives_a_large_file_to_disk_in_bounded_memory() {
    let lan = Lan::new(2).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (node, mut browser, id) = trusted_browser(&lan, work.path());
    let size = large_receive_bytes();
    let files = tempfile::tempdir().unwrap();
    let down = files.path().join("large.bin");
    let expected = streamed_random_file(&down, size, 19);

    let before = browser.ask("memory", Duration::from_secs(10));
    browser.ask("watch-memory", Duration::from_secs(10));
    let started = Instant::now();
    let out = node
        .home
        .run(&["send", down.to_str().unwrap(), "--to", &id[..12]])
        .unwrap();
    assert!(out.success(), "{out:?}");
    let saved = work.path().join("large-saved.bin");
    // 20 s plus 1 s per MiB: the debug build receives at 4-5 MB/s alone, and at under half
    // that when the other browser test shares the machine's two cores.
    let seconds = 20 + (size >> 20);
    browser.ask(
        &format!("download large.bin {} {seconds}", saved.display()),
        Duration::from_secs(seconds * 2 + 10),
    );
    let elapsed = started.elapsed();
    let peaks = browser.ask("memory-peaks", Duration::from_secs(10));
    let mib = |v: &Value| v.as_f64().unwrap_or(0.0) / f64::from(1 << 20);
    eprintln!(
        "browser: received {} MiB (verified, stored, saved) in {:.1} s ({:.1} MB/s); \
         renderer RSS {:.0} -> peak {:.0} MiB, all Chromium processes {:.0} -> peak {:.0} MiB, \
         JS heap {:.0} -> peak {:.0} MiB ({} samples)",
        size >> 20,
        elapsed.as_secs_f64(),
        size as f64 / 1e6 / elapsed.as_secs_f64(),
        mib(&before["rendererRss"]),
        mib(&peaks["rendererRss"]),
        mib(&before["browserRss"]),
        mib(&peaks["browserRss"]),
        mib(&before["jsHeap"]),
        mib(&peaks["jsHeap"]),
        peaks["samples"],
    );
    eprintln!(
        "browser: peaks when received (before saving): renderer {:.0} MiB, all {:.0} MiB; \
         timeline [s, renderer MiB, all MiB] {}",
        mib(&peaks["atReceived"]["rendererRss"]),
        mib(&peaks["atReceived"]["browserRss"]),
        peaks["timeline"]
    );
    assert_eq!(streamed_digest(&saved), expected, "byte-identical");
    // Where the chunks went: Chromium keeps IndexedDB Blobs as files beside its database.
    let on_disk = indexeddb_blob_bytes(&work.path().join("profile"));
    eprintln!(
        "browser: IndexedDB blob files in the profile: {} MiB",
        on_disk >> 20
    );
    assert!(
        on_disk >= size,
        "only {on_disk} bytes of Blob files for {size}"
    );
    assert!(peaks["samples"].as_u64().unwrap() > 5, "{peaks}");
    let growth = peaks["rendererRss"]
        .as_u64()
        .unwrap()
        .saturating_sub(before["rendererRss"].as_u64().unwrap());
    assert!(
        growth < RENDERER_GROWTH_BOUND,
        "the tab's renderer grew by {} MiB receiving {} MiB: the file is held in memory",
        growth >> 20,
        size >> 20
    );
}
