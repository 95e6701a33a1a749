//! Journal throughput: durable appends per second with group commit, against a plain
//! write + fdatasync loop, and replay speed.
//!
//! Run with `cargo bench -p fsnode-journal --bench journal`. The journal lives in a temporary
//! directory under Cargo's target tmp dir, on the same file system as the target directory.
//! Optional arguments: seconds per append run (default 2; each configuration runs three times),
//! records for the replay run (default 1000000).

// A benchmark measures wall-clock time; the workspace bans the clock only for the sans-IO core.
#![allow(clippy::disallowed_methods)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fsnode_journal::{Journal, Options, Reader};
use serde::{Deserialize, Serialize};

/// A record shaped like the node's events: about 100 bytes of CBOR.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    kind: String,
    transfer: u64,
    peer: String,
    from: u64,
    to: u64,
}

fn event(i: u64) -> Event {
    Event {
        kind: "ChunksDurable".into(),
        transfer: 0x5eed_0000 + (i % 7),
        peer: "k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8".into(),
        from: i * 16,
        to: i * 16 + 15,
    }
}

/// Repetitions of every append configuration.
const ROUNDS: usize = 3;

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

type BenchResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> BenchResult {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let replay_records: u64 = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let run = Duration::from_secs_f64(secs);

    let root = tempfile::Builder::new()
        .prefix("journal-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let mut encoded = Vec::new();
    ciborium::into_writer(&event(1), &mut encoded)?;
    println!(
        "journal bench in {} ({secs} s per run, {ROUNDS} rounds)",
        root.path().display()
    );
    println!(
        "record: {} bytes of CBOR + 17 bytes of frame header",
        encoded.len()
    );
    println!();

    // The disk's fsync latency drifts (a shared virtual disk here), so every configuration runs
    // ROUNDS times, interleaved with the baseline, and the median is reported.
    let configs: Vec<(usize, &str, u64)> = [1usize, 8, 64]
        .into_iter()
        .flat_map(|t| {
            [
                (t, "1 MiB", Options::default().preallocate_bytes),
                (t, "off", 0),
            ]
        })
        .collect();
    let mut baselines = Vec::new();
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); configs.len()];
    for round in 0..ROUNDS {
        baselines.push(fsync_baseline(&root.path().join("baseline.dat"), run)?);
        for (i, &(threads, label, prealloc)) in configs.iter().enumerate() {
            let opts = Options {
                preallocate_bytes: prealloc,
                ..Options::default()
            };
            let dir = root
                .path()
                .join(format!("appends-{threads}-{label}-{round}"));
            results[i].push(appends(&dir, opts, threads, run)?);
        }
    }
    let baseline = median(&baselines);
    println!(
        "baseline: write(100 B) + fdatasync in a loop: {baseline:.0} fsyncs/s (median of {:?})",
        baselines.iter().map(|b| b.round()).collect::<Vec<_>>()
    );
    println!();
    println!(
        "durable appends (each appender waits for durability before its next append), median of {ROUNDS}:"
    );
    println!(
        "  threads  preallocate   appends/s   records/fsync   vs baseline   (each round's appends/s)"
    );
    for (i, &(threads, label, _)) in configs.iter().enumerate() {
        let rates: Vec<f64> = results[i].iter().map(|r| r.0).collect();
        let batches: Vec<f64> = results[i].iter().map(|r| r.1).collect();
        let rate = median(&rates);
        println!(
            "  {threads:>7}  {label:>11}  {rate:>10.0}  {:>14.1}  {:>11.1}x   {:?}",
            median(&batches),
            rate / baseline,
            rates.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }
    println!();

    replay(&root.path().join("replay"), replay_records)?;
    Ok(())
}

/// fdatasyncs per second of a plain file that grows by 100 bytes each time, like an unbatched log.
fn fsync_baseline(path: &Path, run: Duration) -> Result<f64, std::io::Error> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let data = [0x42u8; 100];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < run {
        file.write_all_at(&data, n * 100)?;
        file.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Durable appends per second and records per fsync with `threads` waiting appenders.
fn appends(
    dir: &Path,
    opts: Options,
    threads: usize,
    run: Duration,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let (journal, _) = Journal::<Event>::open(dir, opts)?;
    // Warm up: create the segment's first allocation, spawn the writer.
    journal.append(&event(0))?.wait()?;
    let before = journal.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let journal = journal.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || -> Result<u64, fsnode_journal::JournalError> {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    journal.append(&event(t as u64 * 1_000_000 + n))?.wait()?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "appender panicked")??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = journal.stats();
    journal.close()?;
    let batches = (after.batches - before.batches).max(1);
    Ok((
        total as f64 / elapsed,
        (after.records - before.records) as f64 / batches as f64,
    ))
}

fn replay(dir: &Path, n: u64) -> BenchResult {
    let (journal, _) = Journal::<Event>::open(dir, Options::default())?;
    let start = Instant::now();
    let mut last = None;
    for i in 0..n {
        last = Some(journal.append(&event(i))?);
    }
    if let Some(p) = last {
        p.wait()?;
    }
    let write = start.elapsed().as_secs_f64();
    let stats = journal.stats();
    journal.close()?;
    println!(
        "write {n} records, one appender not waiting: {:>10.0} records/s ({} batches, {:.0} MB)",
        n as f64 / write,
        stats.batches,
        stats.bytes as f64 / 1e6
    );

    let start = Instant::now();
    let (journal, report) = Journal::<Event>::open(dir, Options::default())?;
    let open = start.elapsed().as_secs_f64();
    println!(
        "open (checks every frame):                  {:>10.0} records/s ({} records in {} segments, {:.3} s)",
        report.records as f64 / open,
        report.records,
        report.segments,
        open
    );

    let start = Instant::now();
    let mut count = 0u64;
    let mut checksum = 0u64;
    for record in journal.replay()? {
        let record = record?;
        checksum = checksum.wrapping_add(record.payload.to);
        count += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(count, n);
    std::hint::black_box(checksum);
    println!(
        "replay (Journal::replay, decode into R):    {:>10.0} records/s ({:.3} s)",
        count as f64 / secs,
        secs
    );
    journal.close()?;

    let reader = Reader::<Event>::open(dir, Options::default())?;
    let start = Instant::now();
    let count = reader.replay()?.try_fold(0u64, |n, r| r.map(|_| n + 1))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "replay (Reader::replay, decode into R):     {:>10.0} records/s ({:.3} s)",
        count as f64 / secs,
        secs
    );
    let start = Instant::now();
    let report = reader.verify()?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "verify (Reader::verify):                    {:>10.0} records/s ({:.3} s)",
        report.records as f64 / secs,
        secs
    );
    Ok(())
}
