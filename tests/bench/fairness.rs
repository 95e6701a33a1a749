//! The `fairness` part: does fsnode's QUIC starve TCP on a link they share? Three hosts on the
//! veth LAN (MTU 1500); host 0's link is shaped with tc tbf to `--fair-rate` (200 Mbit/s by
//! default) both ways, so a queue forms there. A TCP flow from host 0 to host 1 runs alone for
//! 10 s, then again while node A (host 0) sends one file to nodes B (host 1) and C (host 2):
//! two fsnode transfers on two QUIC connections, each with its own congestion controller,
//! beside one TCP flow. Printed: TCP's rate alone and beside fsnode, fsnode's rate in the same
//! 10 s, and each one's share of the link. Once per controller (`bbr`, `cubic`; only
//! `--congestion NAME` when given); `--no-quic` measures the data channel instead.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fsnode_testkit::Lan;

use super::{BASE_PORT, MIB, Node, Opts, TCP_PORT, introduce, mb, write_random_file};

/// How long each TCP measurement runs.
const TCP_SECONDS: u64 = 10;
/// fsnode's transfers run this long before the TCP flow joins them.
const RAMP_UP: Duration = Duration::from_secs(3);

/// Bytes per second of a tc rate (`200mbit`, `1gbit`, `500kbit`).
fn rate_bytes(rate: &str) -> anyhow::Result<f64> {
    let rate = rate.trim().to_ascii_lowercase();
    let (number, unit) = rate
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| rate.split_at(i))
        .context("a rate such as 200mbit")?;
    let bits: f64 = number.parse().context("a rate such as 200mbit")?;
    let scale = match unit {
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        other => bail!("unknown rate unit {other:?} (kbit, mbit, gbit)"),
    };
    Ok(bits * scale / 8.0)
}

pub fn fairness_benchmark(opts: &Opts, data: &Path) -> anyhow::Result<()> {
    let link = rate_bytes(&opts.fair_rate)?;
    // Two copies of the file must outlast the ramp-up and the TCP flow with room to spare.
    let size = ((link * 8.0) as u64).div_ceil(MIB) * MIB;
    let file = data.join("fair.bin");
    write_random_file(&file, size)?;
    let lan = Lan::new(3)?;
    for i in 0..3 {
        lan.set_mtu(i, 1500)?;
    }
    lan.shape_rate(0, &opts.fair_rate)?;
    let controllers: Vec<Option<&str>> = match (&opts.congestion, opts.no_quic) {
        (_, true) => vec![None],
        (Some(name), false) => vec![Some(name.as_str())],
        (None, false) => vec![Some("bbr"), Some("cubic")],
    };
    println!(
        "\n== fairness: host 0's link shaped to {} ({:.1} MB/s), one TCP flow 0 -> 1 for {TCP_SECONDS} \
         s, alone and beside fsnode sending {} MiB from 0 to 1 and to 2 ==",
        opts.fair_rate,
        link / 1e6,
        size / MIB
    );
    let mut summary = Vec::new();
    for congestion in controllers {
        let config = opts.config_with(congestion);
        let label = if opts.no_quic {
            "data channel".to_owned()
        } else {
            format!("QUIC {}", congestion.unwrap_or("default"))
        };
        let mut nodes = Vec::new();
        for i in 0..3 {
            let host = lan.host(i);
            nodes.push(Node::start(
                &opts.fsnode,
                host,
                &format!("n{i}"),
                "eth0",
                &host.addr().to_string(),
                BASE_PORT + i as u16,
                data.join(format!("fair-recv-{i}")),
                &config,
            )?);
        }
        introduce(&nodes[0], &nodes[1])?;
        introduce(&nodes[0], &nodes[2])?;
        let ids: Vec<String> = nodes.iter().map(Node::id).collect::<anyhow::Result<_>>()?;
        let transport = nodes[0].transport(&ids[1])?;
        let alone = tcp_for(&lan, TCP_SECONDS)?;
        let start = Instant::now();
        let mut send = nodes[0]
            .home
            .command(&[
                "send",
                file.to_str().context("utf-8")?,
                "--to",
                &ids[1],
                "--to",
                &ids[2],
                "--wait",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(RAMP_UP);
        let before = sent_bytes(&nodes[0])?;
        let shared = tcp_for(&lan, TCP_SECONDS)?;
        let during = sent_bytes(&nodes[0])? - before;
        let fsnode = during as f64 / shared.1;
        // The rest of the transfers, bounded.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(status) = send.try_wait()? {
                ensure!(status.success(), "fsnode send failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = send.kill();
                bail!("the fairness transfers did not finish within 600 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let total = start.elapsed().as_secs_f64();
        println!(
            "{label} ({transport}): TCP alone {:.1} MB/s ({:.0} % of the link); beside two fsnode \
             transfers TCP {:.1} MB/s ({:.0} % of the link, {:.0} % of its rate alone) and fsnode \
             {:.1} MB/s ({:.0} % of the link) in the same {TCP_SECONDS} s; the two transfers took \
             {total:.1} s ({:.1} MB/s)",
            alone.0,
            100.0 * alone.0 * 1e6 / link,
            shared.0,
            100.0 * shared.0 * 1e6 / link,
            100.0 * shared.0 / alone.0,
            fsnode / 1e6,
            100.0 * fsnode / link,
            mb(2 * size, total)
        );
        summary.push((label, alone.0, shared.0, fsnode / 1e6));
        for node in &mut nodes {
            node.stop()?;
        }
        for i in 1..3 {
            let _ = std::fs::remove_dir_all(data.join(format!("fair-recv-{i}")));
        }
    }
    println!(
        "fairness summary (MB/s): controller, TCP alone, TCP beside fsnode, fsnode beside TCP"
    );
    for (label, alone, shared, fsnode) in summary {
        println!("  {label}: {alone:.1}, {shared:.1}, {fsnode:.1}");
    }
    std::fs::remove_file(&file)?;
    Ok(())
}

/// Bytes of the sender's running and finished sends that the receivers hold durably.
fn sent_bytes(node: &Node) -> anyhow::Result<u64> {
    let transfers = node.json(&["transfers", "--json"])?;
    Ok(transfers["transfers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["direction"] == "send")
        .filter_map(|t| t["done_bytes"].as_u64())
        .sum())
}

/// A TCP flow from host 0 to host 1 for `seconds`: (MB/s, seconds).
fn tcp_for(lan: &Lan, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let me = std::env::current_exe()?;
    let listen = format!("{}:{TCP_PORT}", lan.host(1).addr());
    let mut sink = lan
        .host(1)
        .command(&me)
        .args(["tcp-sink", &listen])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = sink.stdout.take().context("stdout")?;
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready)?;
    let sender = lan
        .host(0)
        .command(&me)
        .args(["tcp-send-for", &listen, &seconds.to_string()])
        .output()?;
    let mut report = String::new();
    out.read_to_string(&mut report)?;
    ensure!(
        sink.wait()?.success() && sender.status.success(),
        "the TCP flow failed"
    );
    let mut numbers = report
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok());
    let (bytes, secs) = (numbers.next().unwrap_or(0.0), numbers.next().unwrap_or(1.0));
    Ok((bytes / 1e6 / secs, secs))
}

/// Reads one connection to its end and prints "bytes seconds".
pub fn tcp_sink(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)?;
    println!("ready");
    std::io::stdout().flush()?;
    let (mut stream, _) = listener.accept()?;
    let start = Instant::now();
    let mut buf = vec![0u8; MIB as usize];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    println!("{total} {:.3}", start.elapsed().as_secs_f64());
    Ok(())
}

/// Sends as fast as TCP takes it for `seconds`.
pub fn tcp_send_for(to: &str, seconds: &str) -> anyhow::Result<()> {
    let seconds: u64 = seconds.parse().context("seconds")?;
    let mut stream = TcpStream::connect(to)?;
    let buf = vec![0x33u8; 256 * 1024];
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        stream.write_all(&buf)?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}
