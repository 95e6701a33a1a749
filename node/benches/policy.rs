//! Policy plugin cost: a cold load (compile, instantiate, configure) and one decision through
//! wasmtime with the instance reused, for `trust-on-offer` (the smallest answer) and
//! `smallest-first` (a 3-entry queue in, a list out).
//!
//! Run with `cargo bench -p fsnode --bench policy`. The plugins are built from `plugins/` first
//! (once; cached in `target/plugins/`). Optional argument: calls per measurement (default 20000).

// A benchmark measures wall-clock time; the workspace bans the clock only for the sans-IO core.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use fsnode::core::policy::Policy;
use fsnode::policy::samples::Samples;
use fsnode::policy::{Limits, PluginHost, Settings, build};

fn main() {
    let calls: u32 = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let started = Instant::now();
    let dir = build::repository_plugins().expect("building the plugins");
    println!("plugins built (or cached) in {:?}", started.elapsed());

    let Samples {
        node,
        peer,
        file,
        queue,
        connected,
    } = Samples::new();

    let load = |name: &str| {
        let settings = Settings {
            dir: dir.to_path_buf(),
            order: Some(vec![name.to_owned()]),
            config: Default::default(),
            limits: Limits::default(),
        };
        let t = Instant::now();
        let host = PluginHost::load(&settings).expect("load");
        (host, t.elapsed())
    };
    let per_call = |total: Duration| total / calls;

    for name in ["trust-on-offer", "smallest-first", "portable-modes"] {
        let mut cold = Vec::new();
        for _ in 0..5 {
            cold.push(load(name).1);
        }
        cold.sort();
        let (mut host, _) = load(name);
        let t = Instant::now();
        for _ in 0..calls {
            match name {
                "trust-on-offer" => {
                    assert!(host.on_offer(&node, &peer).is_some());
                }
                "smallest-first" => {
                    assert!(host.schedule(&node, &queue, &connected).is_some());
                }
                _ => {
                    assert!(host.map_mode(&node, &file).is_some());
                }
            }
        }
        let warm = per_call(t.elapsed());
        let row = &host.describe()[0];
        assert!(row.disabled.is_none(), "{row:?}");
        println!(
            "{name:<16} cold load (median of 5) {:>9.2?}   per decision {:>7.2?}   fuel/decision {}",
            cold[2],
            warm,
            row.fuel / row.calls.max(1)
        );
    }
}
