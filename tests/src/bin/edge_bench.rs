//! edge-bench: the edge's MQTT ingest side by side with Mosquitto and standalone rumqttd,
//! then the edge's drain of a backlog into the cloud.
//!
//! Ingest: N raw MQTT 3.1.1 publishers (rumqttc's codec, pipelined, up to `--window`
//! unacknowledged each; they are not the bottleneck) publish QoS 1 messages of 100 B and
//! 64 KB to each broker in turn, a fresh broker process per row:
//! - the edge with its defaults (`buffer.sync: always`: PUBACK only after the fsync) and
//!   its uplink down, so every message is buffered on disk; and `edge-intvl`, the same
//!   with `sync: interval` (PUBACK before the fsync, like Mosquitto); on request
//!   (`--brokers ...,edge-live`) `edge-live`, the default edge with its uplink up: a cloud
//!   on this machine replicates every record as it is committed (a connected gateway's
//!   steady state; the cloud's CPU competes with the edge's on this machine);
//! - Mosquitto (Debian) with `persistence true` (it writes its database on the autosave
//!   interval and at exit, never before a PUBACK);
//! - rumqttd standalone (`rumqttd-standalone`: the same crate and version the edge embeds,
//!   memory only).
//!
//! Rows print msgs/s, MB/s, publish-to-PUBACK latency p50/p99, the broker's peak RSS
//! (`VmHWM`) and its CPU time per message (user + system, the whole process: a steadier
//! figure than msgs/s on a shared machine); edge rows add a line with the CPU seconds of
//! its busiest threads. Then the edge/Mosquitto ratio (goal >= 1.5).
//!
//! Drain: with the uplink down, N publishers build a backlog of `--backlog-mb` of
//! `--record`-byte records; then the cloud starts on the edge's bootstrap address and
//! the edge drains into it (acks=all, zstd or `--compression`, the cloud's default group
//! fsync). Prints the
//! drain rate, the compression ratio (record bytes / Produce batch bytes), the edge's median and
//! peak RSS while draining (and its anonymous part), disk use before/after and CPU
//! seconds of both processes. Then the same with `cloud.max_bytes_per_sec` = `--cap-mb` MB/s and a smaller backlog: achieved / cap.
//! `--cold` evicts the backlog's batch files from the page cache before the drain: a
//! gateway's backlog outgrows its memory, while this machine's 24 GiB would otherwise
//! serve a 1 GB backlog from memory (unless the edge wrote it with `O_DIRECT`).
//! `--live N` publishes N more records (one publisher, `--record` bytes) while the
//! backlog drains, as cameras go on publishing when an uplink returns: the drain then
//! ends when both are up, and the RSS line covers the edge's worst case for memory.
//!
//!   edge-bench [--publishers 8] [--window 100] [--small 200000] [--large 4000]
//!              [--backlog-mb 1024] [--record 1024] [--cap-mb 20] [--cap-backlog-mb 200]
//!              [--skip-ingest] [--skip-drain] [--cold] [--compression zstd|gzip|lz4|none]
//!              [--live 0]
//!              [--brokers edge,edge-intvl,mosquitto,rumqttd (default; also edge-live)]
//!
//! `EDGE_BENCH_KEEP=1` keeps the work directory (broker logs) instead of deleting it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use tests::mqtt::Conn;
use tests::proc::{
    cpu_secs, dir_bytes, peak_rss_bytes, percentile, rss_anon_bytes, rss_bytes, thread_cpu_secs,
    Cloud, Edge,
};

/// The ingest rows, in order (`edge-live` only on request: see `--brokers`).
const BROKERS: [&str; 5] = ["edge", "edge-live", "edge-intvl", "mosquitto", "rumqttd"];

struct Opts {
    publishers: usize,
    window: usize,
    small: usize,
    large: usize,
    backlog_mb: usize,
    record: usize,
    cap_mb: usize,
    cap_backlog_mb: usize,
    /// Evict the backlog from the page cache before the drain.
    cold: bool,
    /// The edge's `cloud.compression` for the drain.
    compression: String,
    /// Records published live (one publisher) while the backlog drains.
    live: usize,
    ingest: bool,
    drain: bool,
    /// Ingest rows to run (default: all four).
    brokers: Vec<String>,
}

fn opts() -> Result<Opts> {
    tests::usage::exit_on_help(include_str!("edge_bench.rs"));
    let mut o = Opts {
        publishers: 8,
        window: 100,
        small: 200_000,
        large: 4_000,
        backlog_mb: 1024,
        record: 1024,
        cap_mb: 20,
        cap_backlog_mb: 200,
        cold: false,
        compression: "zstd".into(),
        live: 0,
        ingest: true,
        drain: true,
        brokers: BROKERS
            .iter()
            .filter(|b| **b != "edge-live")
            .map(|b| b.to_string())
            .collect(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--skip-ingest" => o.ingest = false,
            "--skip-drain" => o.drain = false,
            "--cold" => o.cold = true,
            "--compression" => {
                let v = args.get(i + 1).context("--compression needs a value")?;
                o.compression = v.clone();
                i += 1;
            }
            "--brokers" => {
                let v = args.get(i + 1).context("--brokers needs a value")?;
                o.brokers = v.split(',').map(str::to_owned).collect();
                if let Some(b) = o.brokers.iter().find(|b| !BROKERS.contains(&b.as_str())) {
                    bail!("unknown broker {b} (one of {BROKERS:?})");
                }
                i += 1;
            }
            flag => {
                let v: usize = args
                    .get(i + 1)
                    .with_context(|| format!("{flag} needs a value"))?
                    .parse()?;
                match flag {
                    "--publishers" => o.publishers = v.max(1),
                    "--window" => o.window = v.clamp(1, 60_000),
                    "--small" => o.small = v,
                    "--large" => o.large = v,
                    "--backlog-mb" => o.backlog_mb = v,
                    "--record" => o.record = v.max(16),
                    "--cap-mb" => o.cap_mb = v,
                    "--cap-backlog-mb" => o.cap_backlog_mb = v,
                    "--live" => o.live = v,
                    other => bail!("unknown flag {other}"),
                }
                i += 1;
            }
        }
        i += 1;
    }
    Ok(o)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts connections on `addr` (process start-up: no event to
/// wait on, so this polls).
fn wait_listening(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A broker process under test; dropping it kills the process.
struct Broker {
    child: Option<Child>,
    edge: Option<Edge>,
    /// The cloud an `edge-live` row replicates into (killed after the edge).
    _cloud: Option<Cloud>,
    addr: String,
}

impl Broker {
    /// A broker process, once it accepts connections on `addr`.
    fn process(child: Child, addr: String) -> Result<Broker> {
        let b = Broker {
            child: Some(child),
            edge: None,
            _cloud: None,
            addr,
        };
        wait_listening(&b.addr)?;
        Ok(b)
    }

    fn pid(&self) -> u32 {
        match (&self.edge, &self.child) {
            (Some(e), _) => e.pid(),
            (None, Some(c)) => c.id(),
            (None, None) => 0,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The edge with `sync`; its uplink down (nothing listens on the bootstrap port, so
/// every publish is buffered), or with `live` up: a cloud on this machine takes every
/// record as it is committed (the steady state of a connected gateway; the cloud's CPU
/// competes with the edge's here).
fn start_edge(dir: &Path, sync: &str, live: bool) -> Result<Broker> {
    let kafka = format!("127.0.0.1:{}", free_port()?);
    let cloud = if live {
        let d = dir.join("cloud");
        std::fs::create_dir_all(&d)?;
        Some(Cloud::start_at(&d, &kafka, "")?)
    } else {
        None
    };
    let edge = Edge::start_sections(
        &dir.join("edge"),
        &format!("  bootstrap: {kafka}"),
        &format!("  sync: {sync}\n  quota_bytes: 4294967296"),
    )?;
    Ok(Broker {
        addr: edge.v4.to_string(),
        edge: Some(edge),
        _cloud: cloud,
        child: None,
    })
}

fn start_mosquitto(dir: &Path) -> Result<Broker> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let cfg = dir.join("mosquitto.conf");
    std::fs::write(
        &cfg,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\n",
            dir.display()
        ),
    )?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            dir.join("mosquitto.log"),
        )?))
        .spawn()
        .context("mosquitto not installed (apt-get install mosquitto)")?;
    Broker::process(child, format!("127.0.0.1:{port}"))
}

fn start_rumqttd(dir: &Path) -> Result<Broker> {
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?.join("rumqttd-standalone");
    let addr = format!("127.0.0.1:{}", free_port()?);
    let child = Command::new(&bin)
        .arg(&addr)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("rumqttd.log"))?))
        .spawn()
        .with_context(|| format!("{} (cargo build --workspace --all-targets)", bin.display()))?;
    Broker::process(child, addr)
}

/// Publishes `n` QoS 1 messages with up to `window` unacknowledged; returns the
/// publish-to-PUBACK latency of each, in ms.
async fn publisher(
    addr: String,
    id: String,
    topic: String,
    (pool, size, seed): (Bytes, usize, usize),
    n: usize,
    window: usize,
) -> Result<Vec<f64>> {
    let mut c = Conn::connect(&addr, &id).await?;
    let mut sent_at = vec![Instant::now(); 65_536];
    let mut lat = Vec::with_capacity(n);
    let mut sent = 0usize;
    while lat.len() < n {
        let inflight = sent - lat.len();
        if sent < n && inflight < window {
            // Top the window up in one write.
            while sent < n && sent - lat.len() < window {
                let pkid = (sent % 65_535 + 1) as u16;
                let body = payload(&pool, size, seed.wrapping_mul(1_000_003) + sent);
                let mut p = Publish::from_bytes(topic.as_str(), QoS::AtLeastOnce, body);
                p.pkid = pkid;
                Packet::Publish(p).write(&mut c.wbuf, usize::MAX)?;
                sent_at[usize::from(pkid)] = Instant::now();
                sent += 1;
            }
            c.flush().await?;
        }
        match c.next().await? {
            Packet::PubAck(a) => {
                lat.push(sent_at[usize::from(a.pkid)].elapsed().as_secs_f64() * 1e3)
            }
            Packet::PingResp => {}
            p => bail!("unexpected {p:?}"),
        }
    }
    Ok(lat)
}

/// 16 MiB of hex digits of pseudo-random bytes: payloads are slices of it at varying
/// offsets, so records differ and compress like sensor text (about 2:1 under zstd), not
/// like one repeated payload.
fn pool() -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(16 << 20);
    while v.len() < 16 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for i in 0..16 {
            v.push(HEX[((x >> (i * 4)) & 15) as usize]);
        }
    }
    Bytes::from(v)
}

/// The `i`-th payload of a publisher: `size` bytes of `pool` at a pseudo-random offset.
fn payload(pool: &Bytes, size: usize, i: usize) -> Bytes {
    let span = pool.len().saturating_sub(size).max(1);
    let at = (i.wrapping_mul(2_654_435_761) ^ (i >> 3)) % span;
    pool.slice(at..(at + size).min(pool.len()))
}

/// Runs `publishers` publishers of `total` messages in all against `addr`; returns the
/// elapsed time and every latency (sorted).
async fn publish_all(
    addr: &str,
    tag: &str,
    publishers: usize,
    total: usize,
    size: usize,
    window: usize,
) -> Result<(Duration, Vec<f64>)> {
    let per = total / publishers;
    let pool = pool();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..publishers {
        tasks.push(tokio::spawn(publisher(
            addr.to_owned(),
            format!("{tag}-{i}"),
            format!("bench/{i}"),
            (pool.clone(), size, i),
            per,
            window,
        )));
    }
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        lat.extend(t.await??);
    }
    let dt = t0.elapsed();
    lat.sort_by(f64::total_cmp);
    Ok((dt, lat))
}

struct Row {
    msgs_s: f64,
}

async fn ingest(o: &Opts, work: &Path) -> Result<()> {
    println!(
        "## ingest: QoS 1, {} publishers, window {} each; peak RSS = VmHWM of a fresh broker per row",
        o.publishers, o.window
    );
    println!(
        "{:<10} {:>8} {:>10} {:>10} {:>9} {:>9} {:>10} {:>9}",
        "broker", "payload", "msgs/s", "MB/s", "p50 ms", "p99 ms", "peak RSS", "CPU us/msg"
    );
    for (size, total) in [(100usize, o.small), (64 << 10, o.large)] {
        if total < o.publishers {
            continue;
        }
        let mut rows: Vec<(&str, Row)> = Vec::new();
        for name in BROKERS
            .into_iter()
            .filter(|b| o.brokers.iter().any(|x| x == b))
        {
            let dir = work.join(format!("{name}-{size}"));
            let broker = match name {
                "edge" => start_edge(&dir, "always", false)?,
                "edge-live" => start_edge(&dir, "always", true)?,
                "edge-intvl" => start_edge(&dir, "interval", false)?,
                "mosquitto" => start_mosquitto(&dir)?,
                _ => start_rumqttd(&dir)?,
            };
            let (dt, lat) =
                publish_all(&broker.addr, name, o.publishers, total, size, o.window).await?;
            let n = lat.len() as f64;
            let row = Row {
                msgs_s: n / dt.as_secs_f64(),
            };
            let cpu = cpu_secs(broker.pid())?;
            println!(
                "{:<10} {:>8} {:>10.0} {:>10.1} {:>9.2} {:>9.2} {:>7.1} MB {:>9.2}",
                name,
                if size == 100 { "100 B" } else { "64 KB" },
                row.msgs_s,
                row.msgs_s * size as f64 / 1e6,
                percentile(&lat, 50.0),
                percentile(&lat, 99.0),
                peak_rss_bytes(broker.pid())? as f64 / 1e6,
                cpu * 1e6 / n,
            );
            if name.starts_with("edge") {
                let threads: Vec<String> = thread_cpu_secs(broker.pid())?
                    .into_iter()
                    .filter(|(_, s)| *s > 0.0)
                    .map(|(t, s)| format!("{t} {s:.2}"))
                    .collect();
                println!(
                    "  {name} CPU s by thread (alive at the row's end): {}",
                    threads.join(", ")
                );
            }
            rows.push((name, row));
        }
        let get = |n: &str| {
            rows.iter()
                .find(|(k, _)| *k == n)
                .map_or(f64::NAN, |(_, r)| r.msgs_s)
        };
        println!(
            "edge/mosquitto msgs/s at {} B: {:.2} (goal >= 1.5), with sync: interval {:.2}, \
             uplink up {:.2}; edge/rumqttd: {:.2}",
            size,
            get("edge") / get("mosquitto"),
            get("edge-intvl") / get("mosquitto"),
            get("edge-live") / get("mosquitto"),
            get("edge") / get("rumqttd"),
        );
    }
    Ok(())
}

/// Drops the cached pages of every batch file in `dir` (committed files are clean:
/// `POSIX_FADV_DONTNEED` evicts them), as on a gateway whose backlog outgrew its memory;
/// returns how many files.
fn evict(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "batch") {
            let f = std::fs::File::open(&path)?;
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Builds a backlog with the uplink down, then starts the cloud and waits for the drain.
async fn drain(o: &Opts, work: &Path, backlog_mb: usize, cap: Option<usize>) -> Result<()> {
    let dir = work.join(format!("drain-{}", cap.unwrap_or(0)));
    let kafka = format!("127.0.0.1:{}", free_port()?);
    let mut cloud_yaml = format!(
        "  bootstrap: {kafka}\n  backoff_max_ms: 200\n  compression: {}",
        o.compression
    );
    if let Some(c) = cap {
        cloud_yaml.push_str(&format!("\n  max_bytes_per_sec: {}", c << 20));
    }
    // The quota must hold the whole backlog (records plus their framing), or the
    // publishers block at the quota (`full_policy: block`) and the backlog never builds.
    let quota = (backlog_mb << 21).max(4 << 30);
    let mut edge = Edge::start_sections(
        &dir.join("edge"),
        &cloud_yaml,
        &format!("  sync: interval\n  quota_bytes: {quota}"),
    )?;
    let n = (backlog_mb << 20) / o.record;
    let (dt, _) = publish_all(
        &edge.v4.to_string(),
        "backlog",
        o.publishers,
        n,
        o.record,
        o.window,
    )
    .await?;
    let n = n / o.publishers * o.publishers;
    // sync: interval acks before the commit; wait until every record is committed.
    while edge.metric("edge_backlog_records")? < n as f64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let data = dir.join("edge").join("data");
    let disk_before = dir_bytes(&data);
    let payload = (n * o.record) as f64;
    println!(
        "backlog: {n} x {} B records ({:.0} MB) in {:.1} s; edge disk {:.0} MB, RSS {:.1} MB (peak so far {:.1} MB)",
        o.record,
        payload / 1e6,
        dt.as_secs_f64(),
        disk_before as f64 / 1e6,
        rss_bytes(edge.pid())? as f64 / 1e6,
        peak_rss_bytes(edge.pid())? as f64 / 1e6,
    );
    if o.cold {
        let evicted = evict(&data.join("buffer").join("batches"))?;
        println!("backlog evicted from the page cache (--cold): {evicted} batch files");
    }
    let cloud_dir = dir.join("cloud");
    std::fs::create_dir_all(&cloud_dir)?;
    let cloud = Cloud::start_at(&cloud_dir, &kafka, "")?;
    let t0 = Instant::now();
    let mut live = (o.live > 0 && cap.is_none()).then(|| {
        let addr = edge.v4.to_string();
        let (live, record, window) = (o.live, o.record, o.window);
        tokio::spawn(async move { publish_all(&addr, "live", 1, live, record, window).await })
    });
    let live_n = if live.is_some() { o.live } else { 0 };
    let (n, payload) = (n + live_n, payload + (live_n * o.record) as f64);
    let (e_cpu, c_cpu) = (cpu_secs(edge.pid())?, cpu_secs(cloud.pid())?);
    let e_threads = thread_cpu_secs(edge.pid())?;
    // (RSS, anonymous RSS) samples while draining.
    let mut rss: Vec<(u64, u64)> = Vec::new();
    let mut first = None;
    // A metrics scrape costs the edge a directory scan of its batch files (a statx each:
    // thousands for a 1 GB backlog), so scrapes are sparse in the middle of the drain:
    // every 50 ms until the first ack, every 500 ms up to 90% acknowledged, then every
    // 10 ms. RSS (from /proc, free for the edge) is sampled every 10-50 ms throughout.
    let mut scraped = Instant::now();
    let mut done = 0.0;
    let mut m: std::collections::HashMap<String, f64> = Default::default();
    loop {
        rss.push((rss_bytes(edge.pid())?, rss_anon_bytes(edge.pid())?));
        let near = done >= 0.9 * n as f64;
        if first.is_none() || near || scraped.elapsed() >= Duration::from_millis(500) {
            m = edge.metrics()?;
            scraped = Instant::now();
            done = m.get("edge_uplink_records_total").copied().unwrap_or(0.0);
        }
        if first.is_none() && done > 0.0 {
            first = Some(t0.elapsed());
        }
        if done >= n as f64 {
            let secs = t0.elapsed().as_secs_f64();
            let wire = m
                .get("edge_uplink_wire_bytes_total")
                .copied()
                .unwrap_or(0.0);
            let e = cpu_secs(edge.pid())? - e_cpu;
            let c = cpu_secs(cloud.pid())? - c_cpu;
            match cap {
                None => {
                    println!(
                        "drain: {:.1} MB/s of records ({:.0} records/s{}) over loopback in {:.1} s \
                         (first ack after {:.2} s); goal >= 200 MB/s",
                        payload / secs / 1e6,
                        n as f64 / secs,
                        if live_n > 0 { ", the live records included" } else { "" },
                        secs,
                        first.unwrap_or_default().as_secs_f64(),
                    );
                    let batches = m.get("edge_uplink_batches_total").copied().unwrap_or(0.0);
                    println!(
                        "{}: {:.0} MB of payload in {:.0} MB of Produce batches (ratio {:.2}, headers included); \
                         {batches:.0} batches, {:.0} records each on average",
                        o.compression,
                        payload / 1e6,
                        wire / 1e6,
                        payload / wire.max(1.0),
                        n as f64 / batches.max(1.0),
                    );
                    let mb = |mut v: Vec<f64>, p: f64| {
                        v.sort_by(f64::total_cmp);
                        percentile(&v, p) / 1e6
                    };
                    let all: Vec<f64> = rss.iter().map(|s| s.0 as f64).collect();
                    let anon: Vec<f64> = rss.iter().map(|s| s.1 as f64).collect();
                    println!(
                        "edge RSS while draining: median {:.1} MB, peak {:.1} MB (goal <= 32 MB); \
                         anonymous median {:.1}, peak {:.1} MB (the rest is mapped files, \
                         mostly the edge's code); {} samples, every 10-50 ms",
                        mb(all.clone(), 50.0),
                        mb(all, 100.0),
                        mb(anon.clone(), 50.0),
                        mb(anon, 100.0),
                        rss.len(),
                    );
                    println!("CPU while draining: edge {e:.1} s, cloud {c:.1} s");
                    if let Some(live) = live.take() {
                        let (dt, lat) = live.await??;
                        println!(
                            "live ingest during the drain: {live_n} x {} B in {:.1} s ({:.0} msgs/s), \
                             PUBACK p50 {:.2} ms, p99 {:.2} ms",
                            o.record,
                            dt.as_secs_f64(),
                            live_n as f64 / dt.as_secs_f64(),
                            percentile(&lat, 50.0),
                            percentile(&lat, 99.0),
                        );
                    }
                    println!(
                        "  edge CPU s by thread while draining: {}",
                        thread_deltas(&e_threads, &thread_cpu_secs(edge.pid())?)
                    );
                }
                Some(c) => {
                    let cap_b = (c << 20) as f64;
                    println!(
                        "capped drain: {:.2} MB/s on the wire with max_bytes_per_sec = {:.2} MB/s: achieved/cap = {:.3}",
                        wire / secs / 1e6,
                        cap_b / 1e6,
                        wire / secs / cap_b
                    );
                }
            }
            break;
        }
        let near = done >= 0.9 * n as f64;
        tokio::time::sleep(Duration::from_millis(if near { 10 } else { 50 })).await;
    }
    if cap.is_none() {
        // Batches are deleted as they are acknowledged; let the last releases land.
        let deadline = Instant::now() + Duration::from_secs(10);
        while edge.metric("edge_backlog_records")? > 0.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "edge disk: {:.0} MB before the drain, {:.1} MB after; cloud data dir {:.0} MB",
            disk_before as f64 / 1e6,
            dir_bytes(&data) as f64 / 1e6,
            dir_bytes(&cloud_dir.join("data")) as f64 / 1e6
        );
    }
    drop(cloud);
    edge.kill()?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = opts()?;
    let tmp = tempfile::tempdir()?;
    let work = tmp.path();
    if std::env::var_os("EDGE_BENCH_KEEP").is_some() {
        println!("(keeping {} for its logs)", work.display());
    }
    if o.ingest {
        ingest(&o, work).await?;
    }
    if o.drain {
        println!(
            "## drain: {} MB of {} B records, {} topics, uplink down then restored",
            o.backlog_mb, o.record, o.publishers
        );
        drain(&o, work, o.backlog_mb, None).await?;
        if o.cap_mb > 0 {
            drain(&o, work, o.cap_backlog_mb, Some(o.cap_mb)).await?;
        }
    }
    if std::env::var_os("EDGE_BENCH_KEEP").is_some() {
        std::mem::forget(tmp);
    }
    Ok(())
}

/// `after - before` per thread name (threads alive at the end), busiest first, as
/// `name 1.23, ...`; names below 0.05 s are left out.
fn thread_deltas(before: &[(String, f64)], after: &[(String, f64)]) -> String {
    let mut d: Vec<(&str, f64)> = after
        .iter()
        .map(|(n, s)| {
            let b = before.iter().find(|(m, _)| m == n).map_or(0.0, |(_, s)| *s);
            (n.as_str(), s - b)
        })
        .filter(|(_, s)| *s >= 0.05)
        .collect();
    d.sort_by(|a, b| b.1.total_cmp(&a.1));
    let d: Vec<String> = d.iter().map(|(n, s)| format!("{n} {s:.2}")).collect();
    d.join(", ")
}
