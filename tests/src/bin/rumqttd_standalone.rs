//! rumqttd-standalone: the rumqttd crate (same version and features as the edge embeds)
//! run as a plain broker, for `edge-bench` to compare against. The crate's own `rumqttd`
//! binary needs its `clap`/`config` dependencies; this is the same broker with a plain
//! configuration: one MQTT 3.1.1 listener, rumqttd's default router sizes
//! (`rumqttd.toml`: 100 MiB x 10 segments), no console, no metrics.
//!
//!   rumqttd-standalone 127.0.0.1:PORT
//!
//! Prints `listening mqtt 127.0.0.1:PORT` once the listener accepts connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

fn main() -> Result<()> {
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .context("usage: rumqttd-standalone 127.0.0.1:PORT")?
        .parse()?;
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 << 20,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::spawn(move || {
        if let Err(e) = broker.start() {
            eprintln!("rumqttd-standalone: {e}");
            std::process::exit(1);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(listen).is_err() {
        if Instant::now() > deadline {
            bail!("rumqttd did not listen on {listen}");
        }
        std::thread::sleep(Duration::from_millis(10)); // broker start-up: no event to wait on
    }
    println!("listening mqtt {listen}");
    loop {
        std::thread::park();
    }
}
