//! The `loss` part: one file between two nodes on the veth LAN (MTU 1500, unshaped)
//! while nftables drops a share of the packets in each direction (`numgen random` on the
//! receiver's input and output),
//! beside a plain TCP copy over the same link in the same run, at 1 %, 2 % and 5 %.

use std::path::Path;

use anyhow::Context;
use fsnode_testkit::Lan;

use super::{
    MIB, Opts, Topology, fmt_list, mb, median, tcp_copy, trusting_pair, write_random_file,
};

/// Loss rates measured, in percent of the packets each host sends.
const LOSS_PERCENT: [u8; 3] = [1, 2, 5];
/// The file moved at each rate (at most `--size-mib`).
const LOSS_FILE_MIB: u64 = 64;

pub fn loss_benchmark(opts: &Opts, data: &Path) -> anyhow::Result<()> {
    let size = LOSS_FILE_MIB.min(opts.size_mib) * MIB;
    let file = data.join("loss.bin");
    write_random_file(&file, size)?;
    let lan = Lan::new(2)?;
    for i in 0..2 {
        lan.set_mtu(i, 1500)?;
    }
    let (mut a, mut b, _a_id, b_id) = trusting_pair(opts, &lan, data, Topology::Gigabit)?;
    println!(
        "\n== loss: {} MiB on the veth LAN (MTU 1500), a share dropped each way ==",
        size / MIB
    );
    let mut table = Vec::new();
    for pct in LOSS_PERCENT {
        // Host 1 drops on its input and its output: `pct` % each way.
        lan.drop_percent(1, pct)?;
        let mut fsnode = Vec::new();
        let mut tcp = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..opts.runs {
            tcp.push(tcp_copy(&lan, &a, &b, &file, size, Topology::Gigabit)?.mbps);
            let cpu0 = [super::proc_usage(a.pid()).0, super::proc_usage(b.pid()).0];
            let secs = super::send_and_check(&a, &b, &b_id, &file, size)
                .with_context(|| format!("at {pct} % loss"))?;
            fsnode.push(mb(size, secs));
            cpu.push(
                super::proc_usage(a.pid()).0 - cpu0[0] + super::proc_usage(b.pid()).0 - cpu0[1],
            );
        }
        let (f, t) = (median(fsnode.clone()), median(tcp.clone()));
        println!(
            "loss {pct} %: fsnode {} MB/s (median {f:.1}) | tcp {} MB/s (median {t:.1}) | ratio \
             {:.1} % | cpu both nodes {} s",
            fmt_list(&fsnode, 1),
            fmt_list(&tcp, 1),
            100.0 * f / t,
            fmt_list(&cpu, 2)
        );
        table.push((pct, f, t));
    }
    lan.clear_drop(1)?;
    println!("loss summary (median MB/s, fsnode / tcp):");
    for (pct, f, t) in table {
        println!("  {pct} %: {f:.1} / {t:.1} = {:.1} %", 100.0 * f / t);
    }
    a.stop()?;
    b.stop()?;
    Ok(())
}
