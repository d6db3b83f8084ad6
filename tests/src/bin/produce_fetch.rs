//! produce-fetch benchmark: N producers (acks=all, one partition each) and M consumers
//! against the cloud, beside the raw RocksDB write rate of the same bytes under the same
//! sync policy (fsync per write group, concurrent writers) — our ceiling — and the ratio.
//! Then a catch-up: the consumers read everything again from offset 0 with nothing
//! produced meanwhile (Fetch alone), beside one thread reading the raw store back: MB/s
//! and the server's CPU seconds per GB read.
//!
//!   cargo run -p tests --bin produce-fetch -- [--producers 4] [--consumers 2]
//!        [--mb 256] [--record-size 1024] [--batch-records 64] [--runs 3]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use kafka_protocol::records::Compression;
use tests::kafka::{count_records, record_batch, Client};
use tests::proc::{cpu_secs, percentile, Cloud};

struct Opts {
    producers: usize,
    consumers: usize,
    mb: usize,
    record_size: usize,
    batch_records: usize,
    runs: usize,
}

fn opts() -> Result<Opts> {
    tests::usage::exit_on_help(include_str!("produce_fetch.rs"));
    let mut o = Opts {
        producers: 4,
        consumers: 2,
        mb: 256,
        record_size: 1024,
        batch_records: 64,
        runs: 3,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v: usize = args.get(i + 1).context("missing value")?.parse()?;
        match args[i].as_str() {
            "--producers" => o.producers = v,
            "--consumers" => o.consumers = v,
            "--mb" => o.mb = v,
            "--record-size" => o.record_size = v,
            "--batch-records" => o.batch_records = v,
            "--runs" => o.runs = v,
            other => anyhow::bail!("unknown flag {other}"),
        }
        i += 2;
    }
    Ok(o)
}

struct Run {
    mb_s: f64,
    records_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    consumed_mb_s: f64,
    /// Reading everything again from offset 0 with nothing produced meanwhile.
    catchup_mb_s: f64,
    /// The server's CPU seconds per GB of that read.
    catchup_cpu_s_per_gb: f64,
}

async fn ours(o: &Opts) -> Result<Run> {
    let dir = tempfile::tempdir()?;
    let cloud = Cloud::start(dir.path(), "storage:\n  sync: group\n")?;
    let log_path = dir.path().join("cloud.log");
    let result = ours_on(o, &cloud).await;
    if result.is_err() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!(
            "cloud log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    result
}

async fn ours_on(o: &Opts, cloud: &Cloud) -> Result<Run> {
    let topic = "bench";
    let mut admin = Client::connect(&cloud.addr).await?;
    let codes = admin
        .create_topics(&[topic.to_string()], o.producers as i32)
        .await?;
    anyhow::ensure!(codes == vec![0], "create topic failed: {codes:?}");
    let batch = record_batch(o.batch_records, o.record_size, Compression::None)?;
    let batches_per_producer = (o.mb << 20) / batch.len() / o.producers;
    let total_records = (batches_per_producer * o.producers * o.batch_records) as u64;
    let consumed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    // Consumer `c` reads the partitions p with p % consumers == c, each to its end.
    let per_part = (batches_per_producer * o.batch_records) as i64;
    let spawn_consumers = |counter: &Arc<AtomicU64>| -> Vec<_> {
        (0..o.consumers)
            .map(|c| {
                let parts: Vec<i32> = (0..o.producers as i32)
                    .filter(|p| *p as usize % o.consumers == c)
                    .collect();
                tokio::spawn(consume(
                    cloud.addr.clone(),
                    parts,
                    per_part,
                    counter.clone(),
                ))
            })
            .collect()
    };
    let consumers = spawn_consumers(&consumed);
    let mut producers = Vec::new();
    for p in 0..o.producers {
        let addr = cloud.addr.clone();
        let batch = batch.clone();
        producers.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await?;
            let mut lat = Vec::with_capacity(batches_per_producer);
            for _ in 0..batches_per_producer {
                let t = Instant::now();
                client.produce("bench", p as i32, batch.clone(), -1).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for p in producers {
        lat.extend(p.await??);
    }
    let produce_secs = start.elapsed().as_secs_f64();
    let mut last = start;
    for c in consumers {
        last = last.max(c.await??.0);
    }
    let consume_secs = (last - start).as_secs_f64();
    anyhow::ensure!(
        consumed.load(Ordering::Relaxed) == total_records,
        "consumers saw a different record count"
    );
    // Catch-up: the consumers read everything again from offset 0 while nothing is
    // produced (a consumer group that starts late, a replay): Fetch alone.
    let cpu0 = cpu_secs(cloud.pid())?;
    let t = Instant::now();
    let again = Arc::new(AtomicU64::new(0));
    let readers = spawn_consumers(&again);
    let mut read = 0u64;
    for r in readers {
        read += r.await??.1;
    }
    let catchup_secs = t.elapsed().as_secs_f64();
    let catchup_cpu = cpu_secs(cloud.pid())? - cpu0;
    anyhow::ensure!(
        again.load(Ordering::Relaxed) == total_records,
        "the catch-up read a different record count"
    );
    lat.sort_by(|a, b| a.total_cmp(b));
    let bytes = (batch.len() * batches_per_producer * o.producers) as f64;
    Ok(Run {
        mb_s: bytes / produce_secs / 1e6,
        records_s: total_records as f64 / produce_secs,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        consumed_mb_s: bytes / consume_secs / 1e6,
        catchup_mb_s: read as f64 / catchup_secs / 1e6,
        catchup_cpu_s_per_gb: catchup_cpu / (read as f64 / 1e9),
    })
}

/// Fetches `parts` of topic `bench` from offset 0 until each holds `per_part` records,
/// counting records into `consumed`; returns when it finished and the bytes it read.
async fn consume(
    addr: String,
    parts: Vec<i32>,
    per_part: i64,
    consumed: Arc<AtomicU64>,
) -> Result<(Instant, u64)> {
    let mut client = Client::connect(&addr).await?;
    let mut offsets = vec![0i64; parts.len()];
    let mut bytes = 0u64;
    while offsets.iter().any(|o| *o < per_part) {
        for (i, p) in parts.iter().enumerate() {
            if offsets[i] >= per_part {
                continue;
            }
            let (records, _) = client.fetch("bench", *p, offsets[i], 4 << 20, 100).await?;
            bytes += records.len() as u64;
            let n = count_records(records) as i64;
            offsets[i] += n;
            consumed.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok((Instant::now(), bytes))
}

fn raw_rocksdb(o: &Opts) -> Result<Run> {
    let dir = tempfile::tempdir()?;
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.increase_parallelism(2);
    opts.set_write_buffer_size(64 << 20);
    let db = Arc::new(rocksdb::DB::open(&opts, dir.path())?);
    let batch = record_batch(o.batch_records, o.record_size, Compression::None)?;
    let batches_per_producer = (o.mb << 20) / batch.len() / o.producers;
    let start = Instant::now();
    let mut threads = Vec::new();
    for p in 0..o.producers {
        let db = db.clone();
        let batch = batch.clone();
        threads.push(std::thread::spawn(move || -> Result<Vec<f64>> {
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
            let mut lat = Vec::new();
            for i in 0..batches_per_producer {
                let mut key = [0u8; 16];
                key[4..8].copy_from_slice(&(p as u32).to_be_bytes());
                key[8..16].copy_from_slice(&((i * 64) as u64).to_be_bytes());
                let t = Instant::now();
                db.put_opt(key, &batch, &wo)?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in threads {
        lat.extend(t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??);
    }
    let secs = start.elapsed().as_secs_f64();
    // The catch-up's ceiling: every stored value read back in key order.
    let cpu0 = cpu_secs(std::process::id())?;
    let t = Instant::now();
    let mut read = 0u64;
    for kv in db.iterator(rocksdb::IteratorMode::Start) {
        read += kv?.1.len() as u64;
    }
    let catchup_secs = t.elapsed().as_secs_f64();
    let catchup_cpu = cpu_secs(std::process::id())? - cpu0;
    lat.sort_by(|a, b| a.total_cmp(b));
    let bytes = (batch.len() * batches_per_producer * o.producers) as f64;
    anyhow::ensure!(read as f64 == bytes, "read back {read} of {bytes} bytes");
    let records = (batches_per_producer * o.producers * o.batch_records) as f64;
    Ok(Run {
        mb_s: bytes / secs / 1e6,
        records_s: records / secs,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        consumed_mb_s: f64::NAN,
        catchup_mb_s: read as f64 / catchup_secs / 1e6,
        catchup_cpu_s_per_gb: catchup_cpu / (read as f64 / 1e9),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = opts()?;
    println!(
        "produce-fetch: {} producers (acks=all), {} consumers, {} MB per run, {} B records, {} records/batch, {} runs (median)",
        o.producers, o.consumers, o.mb, o.record_size, o.batch_records, o.runs
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..o.runs {
        // Alternate the order so neither side always runs on a warmer page cache.
        if r % 2 == 0 {
            a.push(ours(&o).await?);
            b.push(raw_rocksdb(&o)?);
        } else {
            b.push(raw_rocksdb(&o)?);
            a.push(ours(&o).await?);
        }
    }
    let m = |v: &[Run], f: fn(&Run) -> f64| median(v.iter().map(f).collect());
    println!(
        "{:<28} {:>10} {:>12} {:>9} {:>9} {:>12} {:>12} {:>12}",
        "", "MB/s", "records/s", "p50 ms", "p99 ms", "consume MB/s", "catch-up MB/s", "CPU s/GB"
    );
    for (name, v) in [
        ("cloud (Kafka produce)", &a),
        ("raw RocksDB (same bytes)", &b),
    ] {
        println!(
            "{:<28} {:>10.1} {:>12.0} {:>9.2} {:>9.2} {:>12.1} {:>13.1} {:>12.2}",
            name,
            m(v, |r| r.mb_s),
            m(v, |r| r.records_s),
            m(v, |r| r.p50_ms),
            m(v, |r| r.p99_ms),
            m(v, |r| r.consumed_mb_s),
            m(v, |r| r.catchup_mb_s),
            m(v, |r| r.catchup_cpu_s_per_gb)
        );
    }
    println!(
        "ratio cloud/raw (MB/s): produce {:.2}, catch-up read {:.2} (the raw read is one thread iterating the store, no network)",
        m(&a, |r| r.mb_s) / m(&b, |r| r.mb_s),
        m(&a, |r| r.catchup_mb_s) / m(&b, |r| r.catchup_mb_s)
    );
    Ok(())
}
