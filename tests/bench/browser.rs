//! `fsnode-browser-bench`: the browser path at speed. A node (`fsnode run`) in one namespace of
//! a test LAN and Debian's headless Chromium on the node's page in another (driven by
//! `playwright-core` through `tests/web/driver.mjs`, as `tests/e2e/browser.rs` does); the page
//! is trusted, then the same file goes page → node (picked on the page's file input) and
//! node → page (`fsnode send --to` the tab, until the page has verified and stored it), and in
//! the same run the same bytes go over plain HTTP between a tab and a small server in the
//! node's namespace (`fetch()` POST and GET: what the browser and the network do without
//! WebRTC). Prints MB/s each way, the ratio to the baseline, and the CPU seconds of the node and
//! of Chromium (the renderer, all its processes, and its busiest threads).
//!
//! Not part of `cargo test`; BENCHMARKS.md ("The browser path at speed") has the command.
//! Options: `--size-mib N` (default 64), `--runs N` (3), `--fsnode PATH`, `--dir DIR`,
//! `--profile DIR` (the page's JS CPU profile of each direction's first run, `.cpuprofile`, and
//! `perf record -g` of the node, with their top entries printed), `--only up|down|floor`.
//! Needs root (namespaces), `chromium`, `node` and playwright-core (`./test.sh --install`).
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures wall-clock time"
)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fsnode_testkit::{Lan, NodeHome};
use rustix::process::Signal;
use serde_json::Value;

const MIB: u64 = 1024 * 1024;
const NODE_PORT: u16 = 4780;
const BASELINE_PORT: u16 = 4790;

struct Opts {
    fsnode: PathBuf,
    runs: usize,
    size_mib: u64,
    dir: PathBuf,
    profile: Option<PathBuf>,
    only: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: fsnode-browser-bench [--fsnode PATH] [--runs N] [--size-mib N] [--dir DIR] \
         [--profile DIR] [--only up|down|floor]...\n\
         (needs root: it creates network namespaces; and chromium, node, playwright-core)"
    );
    std::process::exit(2)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("http-serve") {
        return http_serve(&args[1]);
    }
    let mut opts = Opts {
        fsnode: std::env::current_exe()?
            .parent()
            .map(|d| d.join("fsnode"))
            .unwrap_or_else(|| PathBuf::from("target/release/fsnode")),
        runs: 3,
        size_mib: 64,
        dir: if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        },
        profile: None,
        only: Vec::new(),
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--fsnode" => opts.fsnode = PathBuf::from(value()),
            "--runs" => opts.runs = value().parse().unwrap_or_else(|_| usage()),
            "--size-mib" => opts.size_mib = value().parse().unwrap_or_else(|_| usage()),
            "--dir" => opts.dir = PathBuf::from(value()),
            "--profile" => opts.profile = Some(PathBuf::from(value())),
            "--only" => opts.only.push(value()),
            _ => usage(),
        }
    }
    ensure!(
        opts.fsnode.exists(),
        "no fsnode binary at {} (cargo build --release -p fsnode, or --fsnode PATH)",
        opts.fsnode.display()
    );
    if let Some(dir) = &opts.profile {
        fs::create_dir_all(dir)?;
    }
    let want = |what: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == what);
    println!(
        "fsnode-browser-bench: {} MiB, {} run(s) each way, data in {}, fsnode {}, load average {}",
        opts.size_mib,
        opts.runs,
        opts.dir.display(),
        opts.fsnode.display(),
        load_average()
    );
    let work = tempfile::Builder::new()
        .prefix("fsnode-browser-bench-")
        .tempdir_in(&opts.dir)
        .context("creating the data directory")?;
    let size = opts.size_mib * MIB;
    let file = work.path().join("source.bin");
    write_random_file(&file, size)?;

    let lan = Lan::new(2)?;
    let receive = work.path().join("received");
    fs::create_dir_all(&receive)?;
    let mut node = NodeHome::in_host(&opts.fsnode, lan.host(0))?;
    let port = NODE_PORT.to_string();
    node.start(&[
        "--name",
        "depot",
        "--interface",
        "eth0",
        "--port",
        &port,
        "--receive-dir",
        receive.to_str().context("utf-8 path")?,
    ])?;
    node.wait_until(Duration::from_secs(20), |h| {
        Ok(h.run(&["peers", "--json"])?.success())
    })?;
    let node_pid = node.daemon_pid().context("the node's pid")?;

    // Chromium gathers no ICE candidate without a default route (tests/e2e/browser.rs).
    let gateway = format!("{}", lan.host(0).addr())
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.254"))
        .context("an IPv4 address")?;
    let out = lan
        .host(1)
        .command("ip")
        .args(["route", "add", "default", "via", &gateway])
        .output()?;
    ensure!(out.status.success(), "ip route add: {out:?}");

    // The baseline's HTTP server, in the node's namespace.
    let me = std::env::current_exe()?;
    let baseline_addr = format!("{}:{BASELINE_PORT}", lan.host(0).addr());
    let mut server = lan
        .host(0)
        .command(&me)
        .args(["http-serve", &baseline_addr])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = [0u8; 6];
    server
        .stdout
        .as_mut()
        .context("stdout")?
        .read_exact(&mut ready)?;
    let server = KillOnDrop(server);

    let url = format!("http://{}:{NODE_PORT}/", lan.host(0).addr());
    let baseline_url = format!("http://{baseline_addr}/");
    let mut browser = Browser::start(&lan, &url, work.path())?;
    let identity = browser.ask("id", 60)?;
    let id = identity["id"].as_str().context("id")?.to_owned();
    browser.ask("state untrusted 30", 35)?;
    node.wait_until(Duration::from_secs(10), |h| {
        Ok(h.run(&["trust", "list", "--json"])?.stdout.contains(&id))
    })?;
    let trusted = node.run(&["trust", "add", &id[..12], "--json"])?;
    ensure!(trusted.success(), "trust add: {trusted:?}");
    browser.ask("state connected 30", 35)?;

    if want("floor") {
        let floor = browser.ask("page-floor 64", 120)?;
        println!(
            "page floor (in the tab, 64 MiB in 128 KiB pieces): SHA-256 (wasm) {} MB/s; \
             IndexedDB Blob puts, one per transaction {} MB/s",
            floor["sha256MBs"], floor["idbMBs"]
        );
    }

    let mbs = |ms: f64| size as f64 / 1e3 / ms.max(1.0);
    let mut summary = Vec::new();
    for direction in [Direction::Up, Direction::Down] {
        if !want(direction.name()) {
            continue;
        }
        println!("\n== {} ==", direction.title());
        let mut rates = Vec::new();
        let mut baselines = Vec::new();
        for run in 1..=opts.runs {
            let name = format!("{}-{run}.bin", direction.name());
            let copy = work.path().join(&name);
            fs::hard_link(&file, &copy).or_else(|_| fs::copy(&file, &copy).map(|_| ()))?;

            let base_ms = match direction {
                Direction::Up => browser.ask(
                    &format!("baseline-upload {baseline_url} {}", copy.display()),
                    300,
                )?,
                Direction::Down => {
                    browser.ask(&format!("baseline-download {baseline_url} {size}"), 300)?
                }
            }["ms"]
                .as_f64()
                .unwrap_or(0.0);
            baselines.push(mbs(base_ms));

            let profiling = run == 1 && opts.profile.is_some();
            let profile_dir = opts.profile.clone().unwrap_or_default();
            if profiling {
                browser.ask("profile-start", 10)?;
            }
            let perf = if profiling {
                Some(Perf::start(
                    node_pid,
                    &profile_dir.join(format!("node-{}.perf.data", direction.name())),
                )?)
            } else {
                None
            };
            let udp_before = [udp_counters(lan.host(0)), udp_counters(lan.host(1))];
            browser.ask("page-debug", 10)?;
            let cpu_before = (proc_cpu(node_pid), browser.ask("cpu", 10)?);
            let started = Instant::now();
            match direction {
                Direction::Up => {
                    browser.ask(&format!("upload {}", copy.display()), 600)?;
                }
                Direction::Down => {
                    let out =
                        node.run(&["send", copy.to_str().context("utf-8")?, "--to", &id[..12]])?;
                    ensure!(out.success(), "fsnode send: {out:?}");
                    browser.ask(&format!("receive {name} 600"), 610)?;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let node_cpu = proc_cpu(node_pid) - cpu_before.0;
            let cpu_after = browser.ask("cpu", 10)?;
            if let Some(perf) = perf {
                perf.finish()?;
            }
            if profiling {
                let path = profile_dir.join(format!("page-{}.cpuprofile", direction.name()));
                let profile = browser.ask(&format!("profile-stop {}", path.display()), 30)?;
                println!(
                    "page JS profile ({} samples, {} % idle), {}; top self time:",
                    profile["samples"],
                    profile["idlePct"],
                    path.display()
                );
                for entry in profile["top"].as_array().into_iter().flatten() {
                    println!("    {:>5} %  {}", entry[1], entry[0].as_str().unwrap_or(""));
                }
            }
            if direction == Direction::Up {
                let got = receive.join(&name);
                let len = fs::metadata(&got).map(|m| m.len()).unwrap_or(0);
                ensure!(
                    len == size,
                    "the node holds {len} of {size} bytes of {name}"
                );
                fs::remove_file(&got)?;
            }
            fs::remove_file(&copy)?;
            let rate = size as f64 / 1e6 / secs;
            rates.push(rate);
            let renderer = cpu_after["renderer"].as_f64().unwrap_or(0.0)
                - cpu_before.1["renderer"].as_f64().unwrap_or(0.0);
            let all = cpu_after["all"].as_f64().unwrap_or(0.0)
                - cpu_before.1["all"].as_f64().unwrap_or(0.0);
            println!(
                "run {run}: fsnode {rate:.1} MB/s ({secs:.2} s; cpu node {node_cpu:.2} s, \
                 chromium {all:.2} s of which renderer {renderer:.2} s) | http baseline {:.1} MB/s \
                 | ratio {:.1} %",
                mbs(base_ms),
                100.0 * rate / mbs(base_ms)
            );
            println!(
                "    busiest Chromium threads: {}",
                busiest_threads(&cpu_before.1, &cpu_after)
            );
            let debug = browser.ask("page-debug", 10)?;
            println!(
                "    page timings (count, ms): send {} receive {}",
                debug["send"], debug["receive"]
            );
            let udp_after = [udp_counters(lan.host(0)), udp_counters(lan.host(1))];
            println!(
                "    UDP datagrams in / receive-buffer drops: node {} / {}, browser {} / {}",
                udp_after[0].0 - udp_before[0].0,
                udp_after[0].1 - udp_before[0].1,
                udp_after[1].0 - udp_before[1].0,
                udp_after[1].1 - udp_before[1].1,
            );
        }
        let (rate, base) = (median(rates.clone()), median(baselines));
        println!(
            "{} median: fsnode {rate:.1} MB/s, http baseline {base:.1} MB/s, ratio {:.1} %; runs {}",
            direction.title(),
            100.0 * rate / base,
            rates
                .iter()
                .map(|r| format!("{r:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        summary.push(format!(
            "{}: {rate:.1} MB/s (http {base:.1})",
            direction.name()
        ));
    }
    println!(
        "\nsummary: {}; load average {}",
        summary.join("; "),
        load_average()
    );
    drop(browser);
    drop(server);
    let out = node.stop_with(Signal::TERM, Duration::from_secs(20))?;
    ensure!(out.success(), "fsnode run exited with {:?}", out.code);
    // The node's SCTP totals for the browser's session(s), where its log has them.
    for line in out.stderr.lines().filter(|l| l.contains("SCTP totals")) {
        println!("node: {}", line.trim());
    }
    if opts.profile.is_some() {
        for direction in [Direction::Up, Direction::Down] {
            let data = opts
                .profile
                .as_ref()
                .map(|d| d.join(format!("node-{}.perf.data", direction.name())))
                .unwrap_or_default();
            if data.exists() {
                println!(
                    "\nnode perf, {} (perf report --no-children, top):",
                    direction.title()
                );
                println!("{}", perf_top(&data));
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Direction::Up => "page -> node",
            Direction::Down => "node -> page",
        }
    }
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// The five Chromium threads that took the most CPU between two `cpu` answers.
fn busiest_threads(before: &Value, after: &Value) -> String {
    let mut used: Vec<(String, f64)> = after["threads"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, cpu)| {
            let was = before["threads"][name].as_f64().unwrap_or(0.0);
            (name.clone(), cpu.as_f64().unwrap_or(0.0) - was)
        })
        .collect();
    used.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    used.iter()
        .take(5)
        .map(|(name, cpu)| format!("{name} {cpu:.2} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A namespace's UDP `InDatagrams` and `RcvbufErrors` (/proc/net/snmp).
fn udp_counters(host: &fsnode_testkit::Host) -> (u64, u64) {
    let snmp = host
        .command("cat")
        .arg("/proc/net/snmp")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    if lines.len() < 2 {
        return (0, 0);
    }
    let value = |name: &str| {
        lines[0]
            .split_whitespace()
            .position(|n| n == name)
            .and_then(|i| lines[1].split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (value("InDatagrams"), value("RcvbufErrors"))
}

/// CPU seconds (user + system) of a process, from /proc.
fn proc_cpu(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    (ticks(14).unwrap_or(0.0) + ticks(15).unwrap_or(0.0)) / 100.0
}

fn write_random_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file = File::create(path)?;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `perf record -g` of one process while a transfer runs.
struct Perf(Child);

impl Perf {
    fn start(pid: u32, out: &Path) -> anyhow::Result<Perf> {
        let child = Command::new("perf")
            .args(["record", "-g", "-F", "999", "-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record (Debian package linux-perf)")?;
        Ok(Perf(child))
    }

    fn finish(mut self) -> anyhow::Result<()> {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.0.id() as i32).context("perf's pid")?,
            Signal::INT,
        )?;
        self.0.wait()?;
        Ok(())
    }
}

/// The top of `perf report --no-children` (self time by symbol), 25 lines.
fn perf_top(data: &Path) -> String {
    let out = Command::new("perf")
        .args([
            "report",
            "--no-children",
            "--stdio",
            "-g",
            "none",
            "--percent-limit",
            "1",
            "-i",
        ])
        .arg(data)
        .output();
    match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .take(25)
            .collect::<Vec<_>>()
            .join("\n"),
        Err(err) => format!("perf report failed: {err}"),
    }
}

/// The page driver (tests/web/driver.mjs): commands on stdin, one JSON answer per line.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
}

impl Browser {
    fn start(lan: &Lan, url: &str, work: &Path) -> anyhow::Result<Browser> {
        let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/driver.mjs");
        let playwright = std::env::var_os("FSNODE_PLAYWRIGHT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                Path::new(&home).join(".cache/fsnode/playwright")
            });
        ensure!(
            playwright.join("node_modules/playwright-core").exists(),
            "playwright-core is not installed in {} (./test.sh --install)",
            playwright.display()
        );
        let mut child = lan
            .host(1)
            .command("node")
            .arg(driver)
            .env("FSNODE_URL", url)
            .env("PLAYWRIGHT_DIR", &playwright)
            .env("WORK_DIR", work)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting node with the browser driver")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Browser {
            child,
            stdin,
            answers,
        })
    }

    fn ask(&mut self, command: &str, seconds: u64) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let line = self
            .answers
            .recv_timeout(Duration::from_secs(seconds))
            .with_context(|| format!("`{command}`: no answer within {seconds} s"))?;
        let answer: Value = serde_json::from_str(&line).with_context(|| line.clone())?;
        if answer["ok"] != true {
            bail!("`{command}`: {answer:#}");
        }
        Ok(answer)
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

/// The baseline's HTTP/1.1 server (run inside the node's namespace): `GET /` a page with a file
/// input, `GET /blob?bytes=N` N bytes, `POST /upload` reads and drops the body. One thread per
/// connection; keep-alive, so a tab's requests reuse one connection.
fn http_serve(addr: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("ready");
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = serve_http(stream);
        });
    }
    Ok(())
}

fn serve_http(mut stream: TcpStream) -> anyhow::Result<()> {
    let block: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
    let mut reader = BufReader::with_capacity(MIB as usize, stream.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut headers = BTreeMap::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        if line.starts_with("POST") {
            let mut left: u64 = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut buf = vec![0u8; MIB as usize];
            while left > 0 {
                let n = reader.read(&mut buf[..left.min(MIB) as usize])?;
                if n == 0 {
                    bail!("the upload ended early");
                }
                left -= n as u64;
            }
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")?;
        } else if let Some(bytes) = target.strip_prefix("/blob?bytes=") {
            let mut left: u64 = bytes.parse().unwrap_or(0);
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {left}\r\n\r\n"
            )?;
            while left > 0 {
                let n = left.min(MIB) as usize;
                stream.write_all(&block[..n])?;
                left -= n as u64;
            }
        } else {
            let page = "<!doctype html><title>baseline</title><input type=file id=file>";
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
                page.len()
            )?;
        }
        stream.flush()?;
    }
}
