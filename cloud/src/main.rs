//! `cloud [--config FILE]`: runs the broker. Logs go to stderr (RUST_LOG filters them);
//! stdout carries one `listening <protocol> <addr>` line per bound listener.

use std::path::PathBuf;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Oversized allocations requested by wire decoders become virtual reservations instead
/// of aborting the process (see `cloud::alloc`).
#[global_allocator]
static GLOBAL: cloud::alloc::Allocator = cloud::alloc::Allocator;

fn usage() -> &'static str {
    "usage: cloud [--config FILE]\n  runs the edge-to-cloud broker; with no --config, built-in defaults (see configs/cloud.yaml)"
}

/// Prints `listening <protocol> <addr>` on stdout. A closed stdout (the launcher stopped
/// reading) must not stop the broker, so write errors are ignored.
fn announce(protocol: &str, addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {protocol} {addr}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    // Colours only on a terminal: a log redirected to a file or journald gets plain text
    // (and a connection span's fields are not wrapped in escape codes for nobody).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let mut config_path: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => match args.next() {
                Some(p) => config_path = Some(PathBuf::from(p)),
                None => {
                    eprintln!("--config needs a file\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "--help" | "-h" => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    let config = match &config_path {
        Some(p) => match cloud::Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => cloud::Config::default(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let running = match cloud::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        announce("kafka", running.kafka_addr);
        if let Some(a) = running.mqtt_addr {
            announce("mqtt", a);
        }
        if let Some(a) = running.mqtts_addr {
            announce("mqtts", a);
        }
        match running.mqtt_ws_addr {
            Some((a, false)) => announce("mqtt-ws", a),
            Some((a, true)) => announce("mqtt-wss", a),
            None => {}
        }
        if let Some(a) = running.metrics_addr {
            announce("metrics", a);
        }
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: cannot install the SIGTERM handler: {e}");
                    return ExitCode::FAILURE;
                }
            };
        let shutdown = running.shutdown();
        let serve = running.serve();
        tokio::pin!(serve);
        tokio::select! {
            _ = &mut serve => return ExitCode::SUCCESS,
            _ = tokio::signal::ctrl_c() => tracing::info!("shutting down on SIGINT"),
            _ = term.recv() => tracing::info!("shutting down on SIGTERM"),
        }
        // Still serving (the MQTT threads run the closing connections) while it stops.
        let stop = tokio::time::timeout(std::time::Duration::from_secs(8), shutdown.run());
        tokio::select! {
            r = stop => if r.is_err() {
                tracing::warn!("shutdown did not finish in 8 s");
            },
            _ = &mut serve => {}
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}
