//! `fsnode-throughput`: moves one file between two real `fsnode run` processes and, in the same
//! run, over a plain TCP copy between the same two endpoints, and prints MB/s, the ratio, CPU
//! seconds and peak RSS of both ends. Also: time to an open channel, many small files, one to
//! three. Not part of `cargo test`; see BENCHMARKS.md ("Throughput") for how to run it.
//!
//! Topologies (all inside network namespaces this program creates and removes):
//! - `loopback`: both nodes in one namespace, on its `lo` (127.0.0.1), introduced with
//!   `fsnode peers add 127.0.0.1:PORT`, unshaped;
//! - `gigabit`: two namespaces on a veth/bridge LAN, each link shaped with tc tbf to 1 Gbit/s
//!   both ways, MTU 1500.
//!
//! The program re-executes itself inside the namespaces for the TCP baseline
//! (`tcp-recv`/`tcp-send` subcommands, and `tcp-sink`/`tcp-send-for` for the fairness part).
//!
//! The link: two fsnode nodes run QUIC (spec 6) unless `--no-quic` writes `[link] quic = false`
//! into every node's `fsnode.toml` (the data channel, as towards browsers); `--congestion NAME`
//! writes QUIC's congestion controller there. Every result line names the transport the nodes
//! reported. `fairness` measures a TCP flow alone, then beside two fsnode transfers (one node
//! to two others, so two QUIC connections) on a `tc tbf`-shaped link, once per controller.
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures wall-clock time"
)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fsnode_testkit::{Host, Lan, NodeHome};
use rustix::process::Signal;
use serde_json::Value;

mod fairness;
mod loss;

const MIB: u64 = 1024 * 1024;
const BASE_PORT: u16 = 7101;
const TCP_PORT: u16 = 7199;

struct Opts {
    fsnode: PathBuf,
    runs: usize,
    size_mib: u64,
    dir: PathBuf,
    only: Vec<String>,
    small_files: usize,
    many_files: usize,
    receivers: usize,
    /// Write `[link] quic = false`: every session on the data channel.
    no_quic: bool,
    /// Write `[link] congestion = NAME`.
    congestion: Option<String>,
    /// The rate `fairness` shapes the shared link to (a tc rate).
    fair_rate: String,
}

impl Opts {
    /// The `fsnode.toml` every node of the benchmark gets.
    fn config_file(&self) -> String {
        self.config_with(self.congestion.as_deref())
    }

    fn config_with(&self, congestion: Option<&str>) -> String {
        let mut text = String::from("[link]\n");
        if self.no_quic {
            text.push_str("quic = false\n");
        }
        if let Some(name) = congestion {
            text.push_str(&format!("congestion = \"{name}\"\n"));
        }
        text
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: fsnode-throughput [--fsnode PATH] [--runs N] [--size-mib N] [--dir DIR] \
         [--small-files N] [--many-files N] [--receivers N] [--no-quic] \
         [--congestion bbr|cubic|newreno] [--fair-rate RATE] \
         [--only loopback|gigabit|small|many|fanout|loss|fairness]...\n\
         (needs root: it creates network namespaces)"
    );
    std::process::exit(2)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tcp-recv") => return tcp_recv(&args[1], Path::new(&args[2])),
        Some("tcp-send") => return tcp_send(&args[1], Path::new(&args[2])),
        Some("tcp-sink") => return fairness::tcp_sink(&args[1]),
        Some("tcp-send-for") => return fairness::tcp_send_for(&args[1], &args[2]),
        _ => {}
    }
    let mut opts = Opts {
        fsnode: default_fsnode(),
        runs: 3,
        size_mib: 1024,
        dir: if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        },
        only: Vec::new(),
        small_files: 10_000,
        many_files: 100_000,
        receivers: 3,
        no_quic: false,
        congestion: None,
        fair_rate: "200mbit".into(),
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--fsnode" => opts.fsnode = PathBuf::from(value()),
            "--runs" => opts.runs = value().parse().unwrap_or_else(|_| usage()),
            "--size-mib" => opts.size_mib = value().parse().unwrap_or_else(|_| usage()),
            "--dir" => opts.dir = PathBuf::from(value()),
            "--small-files" => opts.small_files = value().parse().unwrap_or_else(|_| usage()),
            "--many-files" => opts.many_files = value().parse().unwrap_or_else(|_| usage()),
            "--receivers" => opts.receivers = value().parse().unwrap_or_else(|_| usage()),
            "--no-quic" => opts.no_quic = true,
            "--congestion" => opts.congestion = Some(value()),
            "--fair-rate" => opts.fair_rate = value(),
            "--only" => opts.only.push(value()),
            _ => usage(),
        }
    }
    ensure!(
        opts.fsnode.exists(),
        "no fsnode binary at {} (cargo build --release -p fsnode, or --fsnode PATH)",
        opts.fsnode.display()
    );
    let want = |what: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == what);
    println!(
        "fsnode-throughput: {} MiB file, {} run(s), data in {}, fsnode {}, link config {:?}, \
         load average {}",
        opts.size_mib,
        opts.runs,
        opts.dir.display(),
        opts.fsnode.display(),
        opts.config_file(),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let work = tempfile::Builder::new()
        .prefix("fsnode-bench-")
        .tempdir_in(&opts.dir)
        .context("creating the data directory")?;
    let big = work.path().join("big.bin");
    if want("loopback") || want("gigabit") || want("fanout") {
        write_random_file(&big, opts.size_mib * MIB)?;
    }
    if want("loopback") {
        hashing_floor(opts.size_mib * MIB);
        pair_benchmark(&opts, work.path(), &big, Topology::Loopback)?;
    }
    if want("gigabit") {
        pair_benchmark(&opts, work.path(), &big, Topology::Gigabit)?;
    }
    if want("small") {
        small_files(
            &opts,
            work.path(),
            "small files",
            opts.small_files,
            opts.runs,
        )?;
    }
    if want("many") {
        // One `send DIR` of 100,000 files: bounded memory whatever the queue.
        small_files(&opts, work.path(), "many files", opts.many_files, 1)?;
    }
    if want("fanout") {
        fanout(&opts, work.path(), &big)?;
    }
    if want("loss") {
        loss::loss_benchmark(&opts, work.path())?;
    }
    if want("fairness") {
        fairness::fairness_benchmark(&opts, work.path())?;
    }
    Ok(())
}

/// What spec 4 alone costs on this machine: every byte is hashed with SHA-256 four times (the
/// sender's chunk hash and whole-file hash, the receiver's chunk check and whole-file check).
/// On loopback both nodes share the machine's cores, so this bounds the file rate before any
/// encryption, UDP or SCTP work.
fn hashing_floor(size: u64) {
    use sha2::{Digest, Sha256};
    let block = vec![0x5au8; 64 * 1024 * 1024];
    let start = Instant::now();
    let mut hashed = 0u64;
    let mut hasher = Sha256::new();
    while hashed < 512 * MIB {
        hasher.update(&block);
        hashed += block.len() as u64;
    }
    std::hint::black_box(hasher.finalize());
    let rate = hashed as f64 / start.elapsed().as_secs_f64();
    let cpu = 4.0 * size as f64 / rate;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "hashing floor: SHA-256 {:.2} GB/s on one core; 4 passes over {} MiB = {:.2} CPU-s, \
         so at most {:.0} MB/s on {} cores shared by both nodes, before encryption, UDP and SCTP",
        rate / 1e9,
        size / MIB,
        cpu,
        size as f64 / (cpu / cores) / 1e6,
        cores
    );
}

fn default_fsnode() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_default();
    me.parent()
        .map(|d| d.join("fsnode"))
        .unwrap_or_else(|| PathBuf::from("target/release/fsnode"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Topology {
    Loopback,
    Gigabit,
}

/// A running node of the benchmark.
struct Node {
    home: NodeHome,
    host: Host,
    args: Vec<String>,
    addr: String,
    receive: PathBuf,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    fn start(
        fsnode: &Path,
        host: &Host,
        name: &str,
        interface: &str,
        ip: &str,
        port: u16,
        receive: PathBuf,
        config: &str,
    ) -> anyhow::Result<Node> {
        fs::create_dir_all(&receive)?;
        let mut home = NodeHome::in_host(fsnode, host)?;
        let config_dir = home.path().join("config");
        fs::create_dir_all(&config_dir)?;
        fs::write(config_dir.join("fsnode.toml"), config)?;
        let args: Vec<String> = [
            "--name",
            name,
            "--interface",
            interface,
            "--port",
            &port.to_string(),
            "--receive-dir",
            receive.to_str().context("utf-8 path")?,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        home.start(&refs)?;
        let node = Node {
            home,
            host: host.clone(),
            args,
            addr: format!("{ip}:{port}"),
            receive,
        };
        node.wait_ready()?;
        Ok(node)
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.home.start(&refs)
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let out = self.home.stop_with(Signal::TERM, Duration::from_secs(20))?;
        ensure!(
            out.success(),
            "fsnode run exited with {:?}: {}",
            out.code,
            out.stderr
        );
        Ok(())
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        self.home.wait_until(Duration::from_secs(20), |h| {
            Ok(h.run(&["peers", "--json"])?.success())
        })
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.home.run(args)?;
        ensure!(out.success(), "fsnode {args:?}: {out:?}");
        Ok(serde_json::from_str(&out.stdout)?)
    }

    fn id(&self) -> anyhow::Result<String> {
        Ok(self.json(&["id", "--json"])?["device_id"]
            .as_str()
            .context("device_id")?
            .to_owned())
    }

    /// What carries the connection with `peer` (`quic`, `data-channel`).
    fn transport(&self, peer: &str) -> anyhow::Result<String> {
        let peers = self.json(&["peers", "--json"])?;
        Ok(peers["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"] == peer)
            .and_then(|p| p["transport"].as_str())
            .unwrap_or("-")
            .to_owned())
    }

    fn connection(&self, peer: &str) -> anyhow::Result<String> {
        let peers = self.json(&["peers", "--json"])?;
        Ok(peers["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"] == peer)
            .and_then(|p| p["connection"].as_str())
            .unwrap_or("")
            .to_owned())
    }

    fn pid(&self) -> u32 {
        self.home.daemon_pid().unwrap_or(0)
    }
}

/// CPU seconds (user + system) and peak RSS (MiB) of a process, from /proc.
fn proc_usage(pid: u32) -> (f64, f64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu = ticks(14).unwrap_or(0.0) + ticks(15).unwrap_or(0.0);
    let hwm = vm_hwm_kib(&format!("/proc/{pid}/status"));
    (cpu / clock_ticks(), hwm as f64 / 1024.0)
}

fn vm_hwm_kib(path: &str) -> u64 {
    vm_kib(path, "VmHWM:")
}

/// A `/proc/PID/status` figure in KiB (`VmHWM:`, `VmRSS:`, …).
fn vm_kib(path: &str, field: &str) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    100.0 // USER_HZ on Linux
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
    file.sync_all()?;
    Ok(())
}

/// Two trusting nodes, connected.
fn trusting_pair(
    opts: &Opts,
    lan: &Lan,
    data: &Path,
    topology: Topology,
) -> anyhow::Result<(Node, Node, String, String)> {
    let (hb, interface, ip_a, ip_b) = match topology {
        Topology::Loopback => (0, "lo", "127.0.0.1".to_owned(), "127.0.0.1".to_owned()),
        Topology::Gigabit => (
            1,
            "eth0",
            lan.host(0).addr().to_string(),
            lan.host(1).addr().to_string(),
        ),
    };
    let config = opts.config_file();
    let a = Node::start(
        &opts.fsnode,
        lan.host(0),
        "sender",
        interface,
        &ip_a,
        BASE_PORT,
        data.join("recv-a"),
        &config,
    )?;
    let b = Node::start(
        &opts.fsnode,
        lan.host(hb),
        "receiver",
        interface,
        &ip_b,
        BASE_PORT + 1,
        data.join("recv-b"),
        &config,
    )?;
    introduce(&a, &b)?;
    let (a_id, b_id) = (a.id()?, b.id()?);
    Ok((a, b, a_id, b_id))
}

/// `a` dials `b` directly and both trust each other; waits until connected.
fn introduce(a: &Node, b: &Node) -> anyhow::Result<()> {
    let (a_id, b_id) = (a.id()?, b.id()?);
    a.json(&["peers", "add", &b.addr, "--json"])?;
    wait("peers know each other", Duration::from_secs(10), || {
        Ok(a.json(&["peers", "--json"])?.to_string().contains(&b_id)
            && b.json(&["peers", "--json"])?.to_string().contains(&a_id))
    })?;
    a.json(&["trust", "add", &b_id, "--json"])?;
    b.json(&["trust", "add", &a_id, "--json"])?;
    wait("connected", Duration::from_secs(20), || {
        Ok(a.connection(&b_id)? == "connected" && b.connection(&a_id)? == "connected")
    })?;
    Ok(())
}

fn wait(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Clone, Debug)]
struct Sample {
    mbps: f64,
    secs: f64,
    cpu: [f64; 2],
    rss: [f64; 2],
}

fn mb(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn pair_benchmark(opts: &Opts, data: &Path, big: &Path, topology: Topology) -> anyhow::Result<()> {
    let hosts = if topology == Topology::Loopback { 1 } else { 2 };
    let lan = Lan::new(hosts)?;
    if topology == Topology::Gigabit {
        for i in 0..2 {
            lan.set_mtu(i, 1500)?;
            lan.shape_rate(i, "1gbit")?;
        }
    }
    let size = fs::metadata(big)?.len();
    let (mut a, mut b, a_id, b_id) = trusting_pair(opts, &lan, data, topology)?;
    println!(
        "\n== {topology:?} == (transport: {} / {})",
        a.transport(&b_id)?,
        b.transport(&a_id)?
    );

    // Time to an open channel: both nodes (trusting each other) restarted at once.
    let mut opens = Vec::new();
    for _ in 0..opts.runs {
        a.stop()?;
        b.stop()?;
        let start = Instant::now();
        a.restart()?;
        b.restart()?;
        let a_id = a_id_of(&a)?;
        wait("reconnected", Duration::from_secs(30), || {
            Ok(a.connection(&b_id)? == "connected" && b.connection(&a_id)? == "connected")
        })?;
        opens.push(start.elapsed().as_secs_f64());
    }
    println!(
        "open: both started -> channel open (both report connected): {} s, median {:.2} s",
        fmt_list(&opens, 2),
        median(opens.clone())
    );

    let mut tcp = Vec::new();
    let mut fs_runs = Vec::new();
    for run in 0..opts.runs {
        tcp.push(tcp_copy(&lan, &a, &b, big, size, topology)?);
        let cpu0 = [proc_usage(a.pid()).0, proc_usage(b.pid()).0];
        let secs = send_and_check(&a, &b, &b_id, big, size)?;
        let (ua, ra) = proc_usage(a.pid());
        let (ub, rb) = proc_usage(b.pid());
        let s = Sample {
            mbps: mb(size, secs),
            secs,
            cpu: [ua - cpu0[0], ub - cpu0[1]],
            rss: [ra, rb],
        };
        let t = &tcp[run];
        let gib = size as f64 / (1u64 << 30) as f64;
        println!(
            "run {}: fsnode {:.1} MB/s ({:.2} s; cpu sender {:.2} s receiver {:.2} s = {:.2} \
             CPU-s/GiB both; peak RSS {:.0} / {:.0} MiB) | tcp {:.1} MB/s ({:.2} s; cpu {:.2} / \
             {:.2} s; RSS {:.0} / {:.0} MiB) | ratio {:.1} %",
            run + 1,
            s.mbps,
            s.secs,
            s.cpu[0],
            s.cpu[1],
            (s.cpu[0] + s.cpu[1]) / gib,
            s.rss[0],
            s.rss[1],
            t.mbps,
            t.secs,
            t.cpu[0],
            t.cpu[1],
            t.rss[0],
            t.rss[1],
            100.0 * s.mbps / t.mbps
        );
        fs_runs.push(s);
    }
    let f = median(fs_runs.iter().map(|s| s.mbps).collect());
    let t = median(tcp.iter().map(|s| s.mbps).collect());
    let min = fs_runs.iter().map(|s| s.mbps).fold(f64::INFINITY, f64::min);
    let gib = size as f64 / (1u64 << 30) as f64;
    let cpu = median(
        fs_runs
            .iter()
            .map(|s| (s.cpu[0] + s.cpu[1]) / gib)
            .collect(),
    );
    println!(
        "{topology:?} median: fsnode {f:.1} MB/s, tcp {t:.1} MB/s, ratio {:.1} %, slowest run {:.1} MB/s \
         ({:.0} % of median); {cpu:.2} CPU-s/GiB for both nodes; peak RSS sender {:.0} MiB \
         receiver {:.0} MiB",
        100.0 * f / t,
        min,
        100.0 * min / f,
        fs_runs.iter().map(|s| s.rss[0]).fold(0.0, f64::max),
        fs_runs.iter().map(|s| s.rss[1]).fold(0.0, f64::max),
    );
    if topology == Topology::Gigabit {
        for h in lan.hosts() {
            let snmp = h
                .command("cat")
                .arg("/proc/net/snmp")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            println!("{}: {}", h.name(), udp_errors(&snmp));
            let tc = h
                .command("tc")
                .args(["-s", "qdisc", "show", "dev", h.interface()])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let sent = tc
                .lines()
                .find(|l| l.trim_start().starts_with("Sent"))
                .unwrap_or("")
                .trim();
            println!("{} {} tbf: {sent}", h.name(), h.interface());
        }
    } else {
        let snmp = lan
            .host(0)
            .command("cat")
            .arg("/proc/net/snmp")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        println!("namespace UDP: {}", udp_errors(&snmp));
    }
    a.stop()?;
    b.stop()?;
    dump_journals(&[&a, &b])?;
    Ok(())
}

/// `fsnode send FILE --to B --wait` on `a`: the seconds it took, once `b` holds all of it (the
/// received copy is then removed for the next run).
fn send_and_check(a: &Node, b: &Node, b_id: &str, file: &Path, size: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = a.home.run(&[
        "send",
        file.to_str().context("utf-8")?,
        "--to",
        b_id,
        "--wait",
    ])?;
    let secs = start.elapsed().as_secs_f64();
    ensure!(out.success(), "fsnode send failed: {out:?}");
    let received = b.receive.join(file.file_name().context("a file name")?);
    let got = fs::metadata(&received).map(|m| m.len()).unwrap_or(0);
    ensure!(got == size, "received {got} of {size} bytes");
    fs::remove_file(&received)?;
    Ok(secs)
}

/// With `FSNODE_BENCH_JOURNALS=DIR`, copies each node's journal (`journal show --json`) there
/// (for looking at the progress cadence: `ChunksDurable` times on both sides).
fn dump_journals(nodes: &[&Node]) -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os("FSNODE_BENCH_JOURNALS") else {
        return Ok(());
    };
    for (i, node) in nodes.iter().enumerate() {
        let out = node.home.run(&["journal", "show", "--json"])?;
        fs::write(Path::new(&dir).join(format!("node{i}.jsonl")), out.stdout)?;
    }
    Ok(())
}

fn a_id_of(a: &Node) -> anyhow::Result<String> {
    a.id()
}

/// "InErrors=… RcvbufErrors=… SndbufErrors=…" from /proc/net/snmp's Udp lines.
fn udp_errors(snmp: &str) -> String {
    let lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    if lines.len() < 2 {
        return "no Udp counters".into();
    }
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let values: Vec<&str> = lines[1].split_whitespace().collect();
    names
        .iter()
        .zip(values.iter())
        .filter(|(n, _)| ["InDatagrams", "InErrors", "RcvbufErrors", "SndbufErrors"].contains(n))
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn fmt_list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The TCP baseline between the same two endpoints (the nodes' namespaces and addresses):
/// read the file, send it over one TCP connection, write it, fsync it.
fn tcp_copy(
    lan: &Lan,
    a: &Node,
    b: &Node,
    big: &Path,
    size: u64,
    topology: Topology,
) -> anyhow::Result<Sample> {
    let me = std::env::current_exe()?;
    let ip = b
        .addr
        .rsplit_once(':')
        .map(|(ip, _)| ip)
        .unwrap_or("127.0.0.1");
    let listen = format!("{ip}:{TCP_PORT}");
    let out = b.receive.join("tcp.bin");
    let recv_host = if topology == Topology::Loopback {
        lan.host(0)
    } else {
        &b.host
    };
    let mut receiver = recv_host
        .command(&me)
        .args(["tcp-recv", &listen, out.to_str().context("utf-8")?])
        .stdout(Stdio::piped())
        .spawn()?;
    // The receiver prints "ready" once it listens.
    let mut rstdout = receiver.stdout.take().context("stdout")?;
    let mut ready = [0u8; 6];
    rstdout.read_exact(&mut ready)?;
    let start = Instant::now();
    let sender = a
        .host
        .command(&me)
        .args(["tcp-send", &listen, big.to_str().context("utf-8")?])
        .stdout(Stdio::piped())
        .output()?;
    let mut rest = String::new();
    rstdout.read_to_string(&mut rest)?;
    let status = receiver.wait()?;
    let secs = start.elapsed().as_secs_f64();
    ensure!(
        status.success() && sender.status.success(),
        "tcp copy failed"
    );
    let got = fs::metadata(&out)?.len();
    fs::remove_file(&out)?;
    ensure!(got == size, "tcp copy: {got} of {size} bytes");
    let parse = |s: &str| -> (f64, f64) {
        let mut it = s.split_whitespace().filter_map(|w| w.parse::<f64>().ok());
        (it.next().unwrap_or(0.0), it.next().unwrap_or(0.0))
    };
    let (cs, rs) = parse(&String::from_utf8_lossy(&sender.stdout));
    let (cr, rr) = parse(&rest);
    Ok(Sample {
        mbps: mb(size, secs),
        secs,
        cpu: [cs, cr],
        rss: [rs, rr],
    })
}

/// Prints "cpu_seconds peak_rss_mib" of this process.
fn print_self_usage() {
    let (cpu, rss) = proc_usage(std::process::id());
    println!("{cpu:.3} {rss:.1}");
}

fn tcp_recv(listen: &str, out: &Path) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)?;
    println!("ready");
    std::io::stdout().flush()?;
    let (mut stream, _) = listener.accept()?;
    let mut file = File::create(out)?;
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
    }
    file.sync_all()?;
    print_self_usage();
    Ok(())
}

fn tcp_send(to: &str, path: &Path) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(to)?;
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    print_self_usage();
    Ok(())
}

/// 10,000 files of 4 KiB in one directory, unshaped (loopback).
/// `count` files of 4 KiB in one `send DIR --wait`, `runs` times: files/s and both nodes' peak
/// RSS.
fn small_files(
    opts: &Opts,
    data: &Path,
    label: &str,
    count: usize,
    runs: usize,
) -> anyhow::Result<()> {
    let dir = data.join("small");
    fs::create_dir_all(&dir)?;
    let mut block = vec![0u8; 4096];
    for i in 0..count {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        fs::write(dir.join(format!("f{i:06}.bin")), &block)?;
    }
    let lan = Lan::new(1)?;
    let (mut a, mut b, _a_id, b_id) = trusting_pair(opts, &lan, data, Topology::Loopback)?;
    println!("\n== {label}: {count} x 4 KiB ==");
    let mut rates = Vec::new();
    for run in 0..runs {
        let cpu0 = [proc_usage(a.pid()).0, proc_usage(b.pid()).0];
        let start = Instant::now();
        let out = a.home.run(&[
            "send",
            dir.to_str().context("utf-8")?,
            "--to",
            &b_id,
            "--wait",
        ])?;
        let secs = start.elapsed().as_secs_f64();
        ensure!(out.success(), "fsnode send failed: {out:?}");
        let got = count_files(&b.receive)?;
        ensure!(
            got == count,
            "received {got} of {count} files; fsnode send said: {}{}",
            tail(&out.stdout),
            tail(&out.stderr)
        );
        fs::remove_dir_all(&b.receive)?;
        fs::create_dir_all(&b.receive)?;
        let (ua, ra) = proc_usage(a.pid());
        let (ub, rb) = proc_usage(b.pid());
        let rate = count as f64 / secs;
        println!(
            "run {}: {} files in {secs:.2} s = {rate:.0} files/s (cpu sender {:.2} s receiver {:.2} \
             s; peak RSS {ra:.0} / {rb:.0} MiB)",
            run + 1,
            count,
            ua - cpu0[0],
            ub - cpu0[1]
        );
        rates.push(rate);
    }
    println!("{label} median: {:.0} files/s", median(rates));
    a.stop()?;
    b.stop()?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The last 2,000 bytes of a command's output, for an error message.
fn tail(text: &str) -> String {
    let start = text.len().saturating_sub(2000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text[start..].to_owned()
}

fn count_files(dir: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            n += count_files(&entry.path())?;
        } else if !entry.file_name().to_string_lossy().ends_with(".part") {
            n += 1;
        }
    }
    Ok(n)
}

/// One sender to `--receivers` receivers at once (default 3), unshaped (one namespace,
/// loopback). All receivers are introduced at once, as an operator would add them, and the
/// bench reports how long until every one is connected (and how many still negotiate at 5 s).
fn fanout(opts: &Opts, data: &Path, big: &Path) -> anyhow::Result<()> {
    let receivers = opts.receivers.max(1);
    let lan = Lan::new(1)?;
    let host = lan.host(0);
    let mut nodes = Vec::new();
    for i in 0..=receivers {
        let port = BASE_PORT + u16::try_from(i).context("too many receivers")?;
        nodes.push(Node::start(
            &opts.fsnode,
            host,
            &format!("n{i}"),
            "lo",
            "127.0.0.1",
            port,
            data.join(format!("recv-{i}")),
            &opts.config_file(),
        )?);
    }
    let ids: Vec<String> = nodes.iter().map(Node::id).collect::<anyhow::Result<_>>()?;
    introduce_all(&nodes, &ids)?;
    let size = fs::metadata(big)?.len();
    println!("\n== one to {receivers} ==");
    println!(
        "sender RSS with {receivers} peers connected, before sending: {:.0} MiB",
        vm_kib(&format!("/proc/{}/status", nodes[0].pid()), "VmRSS:") as f64 / 1024.0
    );
    let mut rates = Vec::new();
    for run in 0..opts.runs {
        let cpu0: Vec<f64> = nodes.iter().map(|n| proc_usage(n.pid()).0).collect();
        let start = Instant::now();
        let mut args = vec!["send", big.to_str().context("utf-8")?];
        for id in &ids[1..] {
            args.extend(["--to", id.as_str()]);
        }
        args.push("--wait");
        let out = nodes[0].home.run(&args)?;
        let secs = start.elapsed().as_secs_f64();
        ensure!(out.success(), "fsnode send failed: {out:?}");
        for n in &nodes[1..] {
            let f = n.receive.join("big.bin");
            ensure!(fs::metadata(&f)?.len() == size, "incomplete at {}", n.addr);
            fs::remove_file(&f)?;
        }
        let usage: Vec<(f64, f64)> = nodes.iter().map(|n| proc_usage(n.pid())).collect();
        let rate = mb(receivers as u64 * size, secs);
        println!(
            "run {}: {receivers} x {} MiB in {secs:.2} s = {rate:.1} MB/s aggregate; sender peak \
             RSS {:.0} MiB; cpu {} s; peak RSS {} MiB",
            run + 1,
            size / MIB,
            usage[0].1,
            usage
                .iter()
                .zip(&cpu0)
                .map(|((c, _), c0)| format!("{:.2}", c - c0))
                .collect::<Vec<_>>()
                .join(" / "),
            usage
                .iter()
                .map(|(_, r)| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
        );
        rates.push(rate);
    }
    println!(
        "one to {receivers} median: {:.1} MB/s aggregate",
        median(rates)
    );
    for n in &mut nodes {
        n.stop()?;
    }
    Ok(())
}

/// Node 0 adds every other node at once (`peers add`), all trust each other, then waits until
/// node 0 is connected to every one; prints how long that took and how many were still not
/// connected 5 s after they were added.
fn introduce_all(nodes: &[Node], ids: &[String]) -> anyhow::Result<()> {
    let added = Instant::now();
    for n in &nodes[1..] {
        nodes[0].json(&["peers", "add", &n.addr, "--json"])?;
    }
    wait("peers know each other", Duration::from_secs(20), || {
        let seen = nodes[0].json(&["peers", "--json"])?.to_string();
        Ok(ids[1..].iter().all(|id| seen.contains(id.as_str())))
    })?;
    for (n, id) in nodes[1..].iter().zip(&ids[1..]) {
        nodes[0].json(&["trust", "add", id, "--json"])?;
        n.json(&["trust", "add", &ids[0], "--json"])?;
    }
    let mut at_5s = None;
    let connected = |nodes: &[Node]| -> anyhow::Result<usize> {
        let peers = nodes[0].json(&["peers", "--json"])?;
        Ok(peers["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["connection"] == "connected")
            .count())
    };
    let all = ids.len() - 1;
    loop {
        let up = connected(nodes)?;
        if at_5s.is_none() && added.elapsed() >= Duration::from_secs(5) {
            at_5s = Some(up);
        }
        if up >= all {
            break;
        }
        ensure!(
            added.elapsed() < Duration::from_secs(60),
            "only {up} of {all} connected after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "all {all} receivers connected {:.2} s after being added{}",
        added.elapsed().as_secs_f64(),
        match at_5s {
            Some(up) => format!(" ({} still not connected at 5 s)", all - up),
            None => String::new(),
        }
    );
    Ok(())
}
