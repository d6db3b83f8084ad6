//! `edge --config configs/edge.yaml`

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use edge::buffer::Buffer;
use edge::config::Config;
use edge::filter::Uplink;
use edge::ingest::IngestCtx;
use edge::metrics::Metrics;
use edge::replicator::Replicator;

fn parse_args() -> anyhow::Result<Option<PathBuf>> {
    let mut args = std::env::args().skip(1);
    let mut config = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => {
                config = Some(PathBuf::from(args.next().context("--config needs a file")?))
            }
            "--help" | "-h" => {
                println!("usage: edge [--config FILE]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (usage: edge [--config FILE])"),
        }
    }
    Ok(config)
}

/// Best guess whether the wall clock is synchronised: systemd-timesyncd's flag file, or a
/// time after 2024 (gateways without a real-time clock boot in 1970).
fn clock_synced() -> bool {
    std::path::Path::new("/run/systemd/timesync/synchronized").exists()
        || SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() > 1_704_067_200)
}

/// glibc malloc settings the edge runs with unless `MALLOC_ARENA_MAX` is already set.
///
/// - `MALLOC_ARENA_MAX=1`: glibc gives each thread that allocates concurrently its own
///   arena (up to 8 per core), and freed memory stays in the arena that served it: during
///   a 1 GB drain the edge peaked at 43 MB RSS with the default and 29 MB with 2 arenas
///   (session 4). One arena (session 28): with cameras still publishing while a backlog
///   drains (`edge-bench --skip-ingest --backlog-mb 1024 --cap-mb 0 --live 300000`, 1 KB
///   records at about 50,000 msgs/s), 6 runs each way, RSS median 24.4-25.8 MB and
///   peak 28.6-30.2 with one arena, 27.4-29.8 and 32.5-33.8 with two; a drain alone
///   22.0-22.7 / 24.1-24.9 against 23.9-24.1 / 25.3-25.5. Rates did not move out of the
///   noise: ingest 100 B 187-192k vs 179-187k msgs/s, 64 KB 6,140-6,557 vs
///   5,896-6,737 (3 runs each); drains with live publishes median 155 vs 159 MB/s.
///   Threads allocate mostly from their own caches (glibc's tcache), so one arena's
///   lock is not a bottleneck on the edge's two to four busy threads.
/// - `MALLOC_MMAP_THRESHOLD_=131072` (glibc's initial value, now fixed): by default glibc
///   raises the threshold to the size of each large block freed, so the drain's
///   256 KB-1 MB batch buffers move from `mmap` (returned to the kernel on free) into the
///   arenas (kept). 1 GB drain, 2 runs each: peak RSS 30.6 / 33.4 MB without it, 27.9 /
///   27.6 MB with it, at the same drain rate (`edge-bench --skip-ingest`).
///
/// glibc reads these once, before `main`, so the edge re-executes itself with them (same
/// pid, same arguments); set `MALLOC_ARENA_MAX` yourself to choose your own settings.
const MALLOC_ENV: [(&str, &str); 2] = [
    ("MALLOC_ARENA_MAX", "1"),
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
];

/// Re-executes the edge with [`MALLOC_ENV`] unless `MALLOC_ARENA_MAX` is set; returns
/// only when it is set already or the exec failed (then the edge runs with glibc's
/// defaults).
fn tune_malloc() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1));
    for (k, v) in MALLOC_ENV {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
    let err = cmd.exec();
    eprintln!("edge: could not re-execute with {MALLOC_ENV:?}: {err}");
}

fn main() -> std::process::ExitCode {
    tune_malloc();
    {
        use tracing_subscriber::util::SubscriberInitExt;
        let env = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,rumqttd=warn".into());
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        edge::logfilter::subscriber(env, ansi).init();
    }
    let cfg = match parse_args().and_then(|p| match p {
        Some(p) => Config::load(&p).map_err(anyhow::Error::from),
        None => Config::parse("", "(defaults)").map_err(anyhow::Error::from),
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let bcfg = cfg.buffer_config();
    std::fs::create_dir_all(&bcfg.dir)
        .with_context(|| format!("creating {}", bcfg.dir.display()))?;
    let buffer = Arc::new(Buffer::open(bcfg.clone()).context("opening the buffer")?);
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(IngestCtx {
        buffer: buffer.clone(),
        uplink: Uplink::new(
            cfg.uplink
                .filters
                .iter()
                .map(|f| (f.filter.clone(), f.priority)),
        ),
        key_mode: cfg.uplink.key,
        full_policy: bcfg.full_policy,
        metrics: metrics.clone(),
        clock_synced: AtomicBool::new(clock_synced()),
        qos2: Default::default(),
        live: Default::default(),
        order: Default::default(),
    });
    let clock_ctx = ctx.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            clock_ctx
                .clock_synced
                .store(clock_synced(), Ordering::Relaxed);
        }
    });
    let (bound, link) = edge::mqtt::start(&cfg.mqtt, ctx, cfg.downlink.enabled()).await?;
    let mut out = std::io::stdout().lock();
    if let Some(a) = bound.v4 {
        writeln!(out, "listening mqtt-v4 {a}")?;
    }
    if let Some(a) = bound.v5 {
        writeln!(out, "listening mqtt-v5 {a}")?;
    }
    if let Some(addr) = cfg.metrics.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics listener {addr}"))?;
        writeln!(out, "listening metrics {}", l.local_addr()?)?;
        tokio::spawn(edge::metrics::serve(l, metrics.clone(), buffer.clone()));
    }
    out.flush()?;
    drop(out);
    if let Some(link) = link {
        let downlink = edge::downlink::Downlink::new(
            cfg.downlink.clone(),
            &cfg.edge_id,
            cfg.mqtt.max_payload_bytes,
            link,
            metrics.clone(),
        );
        tokio::spawn(downlink.run());
    }
    let replicator = Replicator::new(
        buffer.clone(),
        cfg.cloud.clone(),
        cfg.edge_id.clone(),
        metrics,
    )?;
    tokio::spawn(replicator.run());
    let mut failure = buffer.failure();
    tokio::select! {
        _ = shutdown_signal() => {}
        failed = failure.wait_for(Option::is_some) => {
            // Nothing can be acknowledged any more: exit at once, without the closing
            // commit (and without tearing the runtime down under connections that still
            // wait for the buffer), for the supervisor to restart the edge; the open
            // recovers the files.
            let why = failed.map(|f| f.clone().unwrap_or_default()).unwrap_or_default();
            eprintln!("edge: the buffer failed: {why}");
            std::process::exit(1);
        }
    }
    tracing::info!("shutting down");
    buffer.close().context("closing the buffer")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
