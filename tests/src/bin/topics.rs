//! topics benchmark: creates N single-partition topics (default 1,000,000) with
//! CreateTopics in batches over a few connections, and prints elapsed time, topics/s,
//! the broker's RSS and open file descriptors, and Metadata(one topic) p50/p99 before and
//! after, plus one all-topics Metadata.
//!
//!   cargo run -p tests --bin topics -- [--topics 1000000] [--batch 1000] [--connections 4]

use std::time::Instant;

use anyhow::{Context, Result};
use tests::kafka::Client;
use tests::proc::{open_fds, percentile, rss_bytes, Cloud};

async fn metadata_latency(addr: &str, topic: &str, n: usize) -> Result<(f64, f64)> {
    let mut c = Client::connect(addr).await?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let m = c.metadata(Some(topic)).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            m.topics.first().map(|t| t.error_code) == Some(0),
            "metadata error"
        );
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&lat, 50.0), percentile(&lat, 99.0)))
}

#[tokio::main]
async fn main() -> Result<()> {
    tests::usage::exit_on_help(include_str!("topics.rs"));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str, default: usize| -> Result<usize> {
        match args.iter().position(|a| a == flag) {
            Some(i) => Ok(args.get(i + 1).context("missing value")?.parse()?),
            None => Ok(default),
        }
    };
    let total = get("--topics", 1_000_000)?;
    let batch = get("--batch", 1000)?;
    let conns = get("--connections", 4)?;
    let dir = tempfile::tempdir()?;
    if std::env::var_os("KEEP_LOG").is_some() {
        eprintln!("cloud log: {}", dir.path().join("cloud.log").display());
    }
    let cloud = Cloud::start(dir.path(), "")?;
    let pid = cloud.pid();
    let mut c = Client::connect(&cloud.addr).await?;
    anyhow::ensure!(c.create_topics(&["probe".to_string()], 1).await? == vec![0]);
    let (b50, b99) = metadata_latency(&cloud.addr, "probe", 1000).await?;
    let (rss0, fds0) = (rss_bytes(pid)?, open_fds(pid)?);
    println!("topics: creating {total} topics, {batch} per CreateTopics, {conns} connections");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conns {
        let addr = cloud.addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&addr).await?;
            let mut i = w * batch;
            while i < total {
                let names: Vec<String> = (i..(i + batch).min(total))
                    .map(|n| format!("agent.{n:07}.events"))
                    .collect();
                let codes = c.create_topics(&names, 1).await?;
                anyhow::ensure!(
                    codes.iter().all(|c| *c == 0),
                    "create failed: {:?}",
                    codes.iter().find(|c| **c != 0)
                );
                i += batch * conns;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let (rss1, fds1) = (rss_bytes(pid)?, open_fds(pid)?);
    let (a50, a99) = metadata_latency(&cloud.addr, "agent.0000001.events", 1000).await?;
    let rss_before_all = rss_bytes(pid)?;
    let t = Instant::now();
    let all = c.metadata(None).await?;
    let all_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let _ = c.metadata(None).await?;
    let all_cached_ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "created {} topics in {:.1} s: {:.0} topics/s",
        total,
        secs,
        total as f64 / secs
    );
    println!(
        "RSS: {:.0} MB before, {:.0} MB after",
        rss0 as f64 / 1e6,
        rss1 as f64 / 1e6
    );
    println!("open fds: {fds0} before, {fds1} after");
    println!(
        "Metadata(one topic) p50/p99: {b50:.3}/{b99:.3} ms before, {a50:.3}/{a99:.3} ms after"
    );
    println!(
        "Metadata(all topics): {} topics, {:.0} ms first, {:.0} ms cached (client decode included); RSS {:.0} MB before, {:.0} MB after",
        all.topics.len(),
        all_ms,
        all_cached_ms,
        rss_before_all as f64 / 1e6,
        rss_bytes(pid)? as f64 / 1e6
    );
    println!(
        "goals: <= 60 s ({}), RSS <= 1 GB ({}), constant fds ({})",
        if secs <= 60.0 { "met" } else { "missed" },
        if rss1 <= 1 << 30 { "met" } else { "missed" },
        if fds1 <= fds0 + 4 { "met" } else { "missed" }
    );
    Ok(())
}
