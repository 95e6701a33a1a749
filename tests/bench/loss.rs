//! The `loss` part: one file between two nodes on the veth LAN (MTU 1500) while nftables drops
//! a share of the packets in each direction (`numgen random` on the receiver's input and
//! output), at 0 (fsnode's own loss-free rate, the baseline), 1, 2 and 5 %, beside a plain TCP
//! copy over the same link in the same run; once on the unshaped link, once with the link
//! shaped to `--fair-rate` (200 Mbit/s by default, `tc tbf` both ways, so a queue forms).

use std::path::Path;

use anyhow::Context;
use fsnode_testkit::Lan;

use super::{
    MIB, Opts, Topology, fmt_list, mb, median, tcp_copy, trusting_pair, write_random_file,
};

/// Loss rates measured, in percent of the packets each host sends (0: the baseline).
const LOSS_PERCENT: [u8; 4] = [0, 1, 2, 5];
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
    let transport = a.transport(&b_id)?;
    let mut summary = Vec::new();
    for shape in [None, Some(opts.fair_rate.as_str())] {
        let link = match shape {
            Some(rate) => {
                lan.shape_rate(1, rate)?;
                format!("shaped to {rate} (tbf)")
            }
            None => "unshaped".to_owned(),
        };
        println!(
            "\n== loss: {} MiB on the veth LAN (MTU 1500, {link}), a share dropped each way; \
             fsnode on {transport} ==",
            size / MIB
        );
        let mut own_rate = None;
        for pct in LOSS_PERCENT {
            if pct == 0 {
                lan.clear_drop(1)?;
            } else {
                // Host 1 drops on its input and its output: `pct` % each way.
                lan.drop_percent(1, pct)?;
            }
            let mut fsnode = Vec::new();
            let mut tcp = Vec::new();
            let mut cpu = Vec::new();
            for _ in 0..opts.runs {
                tcp.push(tcp_copy(&lan, &a, &b, &file, size, Topology::Gigabit)?.mbps);
                let cpu0 = [super::proc_usage(a.pid()).0, super::proc_usage(b.pid()).0];
                let secs = super::send_and_check(&a, &b, &b_id, &file, size)
                    .with_context(|| format!("at {pct} % loss, {link}"))?;
                fsnode.push(mb(size, secs));
                cpu.push(
                    super::proc_usage(a.pid()).0 - cpu0[0] + super::proc_usage(b.pid()).0 - cpu0[1],
                );
            }
            let (f, t) = (median(fsnode.clone()), median(tcp.clone()));
            let own = *own_rate.get_or_insert(f);
            println!(
                "loss {pct} %: fsnode {} MB/s (median {f:.1}, {:.0} % of its loss-free rate) | \
                 tcp {} MB/s (median {t:.1}) | fsnode/tcp {:.1} % | cpu both nodes {} s",
                fmt_list(&fsnode, 1),
                100.0 * f / own,
                fmt_list(&tcp, 1),
                100.0 * f / t,
                fmt_list(&cpu, 2)
            );
            summary.push((link.clone(), pct, f, 100.0 * f / own, t));
        }
        lan.clear_drop(1)?;
        if shape.is_some() {
            lan.clear_shape(1)?;
        }
    }
    println!(
        "loss summary (median MB/s): link, loss, fsnode ({transport}), share of its loss-free \
         rate, tcp"
    );
    for (link, pct, f, share, t) in summary {
        println!("  {link}, {pct} %: {f:.1}, {share:.0} %, {t:.1}");
    }
    a.stop()?;
    b.stop()?;
    Ok(())
}
