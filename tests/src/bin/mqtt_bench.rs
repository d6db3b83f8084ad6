//! mqtt-bench: the cloud's MQTT view side by side with Mosquitto (Debian) in one run.
//!
//! Rows: fan-in (many publishers, one subscriber on a wildcard), fan-out (one publisher,
//! many subscribers), and QoS 1 round trip (publish, wait for the subscriber to receive
//! it and for the PUBACK, repeat: one message in flight, so a broker that acknowledges
//! after an fsync runs at one fsync per message; `--warmup` untimed round trips first,
//! because Mosquitto's first few thousand are up to 25% slower than its steady state).
//! Every row reports delivered msgs/s, per-message latency p50/p99 (send time is
//! carried in the payload) and the broker's RSS after the row. Clients are the same raw
//! 3.1.1 clients for both brokers (rumqttc's codec, no client library overhead).
//!
//! A fifth row, downlink, carries cloud-to-gateway messages: `--messages` QoS 1 publishes
//! on `cmd/t` to the broker under test reach a subscriber on a gateway-side broker: for
//! a cloud, an edge whose downlink subscribes to `cmd/#` there (`edge/src/downlink`), for
//! Mosquitto a second Mosquitto bridged to it (`connection`, `topic cmd/# in 1`, the
//! peer a gateway would otherwise run). Latency is publish to gateway-side receipt; RSS
//! is the gateway side's (edge or bridged Mosquitto).
//!
//! A fourth row, connect, is a reconnect storm of devices that carry a will (the usual
//! "offline" status message): `--publishers` clients at once, each connecting with a
//! QoS 1 will, waiting for the CONNACK and disconnecting, `--connects` connections in
//! all, every one with its own client id. It reports connections/s in the msgs/s column
//! and CONNECT-to-CONNACK latency p50/p99.
//!
//!   cargo run -p tests --bin mqtt-bench -- [--publishers 8] [--subscribers 20]
//!        [--messages 10000] [--size 100] [--qos 1] [--round-trips 5000] [--warmup 3000]
//!        [--connects 4000] [--retain 0] [--rows fan-in,fan-out,round-trip,connect,downlink]
//!        [--brokers durable,sync-none,memory,mosquitto (default); also memory-acl,mosquitto-acl]
//!
//! `--retain 1` sets RETAIN on the fan-in and fan-out publishes (devices publishing
//! their state as retained messages): every publish also replaces its topic's retained
//! message, which the cloud stores durably with the record and Mosquitto keeps in memory.
//!
//! The cloud runs three times: with its defaults (QoS 1/2 acknowledged after a group
//! fsync, i.e. durable), with `storage.sync: none` + `mqtt.durable_publish: false` (the
//! record reaches RocksDB's WAL, not the disk, before the ack), and with
//! `storage.default_mode: memory` (topics kept in memory only: what Mosquitto does by
//! default, no persistence of messages at all). Each row ends with every broker's msgs/s
//! as a ratio to Mosquitto's. `--brokers` runs a subset (say `memory`, to profile one
//! cloud alone); the ratios need `mosquitto` among them.
//!
//! Two more brokers on request measure topic access control, each side with rules that
//! allow everything but one unrelated topic, so every publish and every delivery is
//! checked (the most a rule set costs per message): `memory-acl`, the memory cloud with
//! `acl: [{user: "*", read: ["#"], write: ["#"], deny: ["nothing/here"]}]`, and
//! `mosquitto-acl`, Mosquitto with the `acl_file` lines `topic readwrite #` and
//! `topic deny nothing/here`. Each row then compares the two, and each with its plain
//! run when that ran too (the acl's own cost).
//!
//! Two more brokers on request measure topic access control, each side with rules that
//! allow everything but one unrelated topic, so every publish and every delivery is
//! checked (the most a rule set costs per message): `memory-acl`, the memory cloud with
//! `acl: [{user: "*", read: ["#"], write: ["#"], deny: ["nothing/here"]}]`, and
//! `mosquitto-acl`, Mosquitto with the `acl_file` lines `topic readwrite #` and
//! `topic deny nothing/here`. Their row compares the two, and each with its plain run
//! when that ran too (the acl's own cost).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BufMut;
use rumqttc::mqttbytes::v4::{LastWill, Packet, PubAck};
use rumqttc::mqttbytes::QoS;
use tests::mqtt::Conn;
use tests::proc::{percentile, rss_bytes, Cloud, Edge};

const ROWS: [&str; 5] = ["fan-in", "fan-out", "round-trip", "connect", "downlink"];
const BROKERS: [&str; 4] = ["durable", "sync-none", "memory", "mosquitto"];
/// Brokers run only when `--brokers` names them.
const OPTIONAL_BROKERS: [&str; 2] = ["memory-acl", "mosquitto-acl"];

struct Opts {
    publishers: usize,
    subscribers: usize,
    messages: usize,
    size: usize,
    qos: QoS,
    round_trips: usize,
    /// Untimed round trips before the timed ones.
    warmup: usize,
    /// Connections in the connect row.
    connects: usize,
    /// RETAIN on the fan-in and fan-out publishes.
    retain: bool,
    /// Which rows to run (`--rows fan-in,fan-out,round-trip`).
    rows: Vec<String>,
    /// Which brokers to run them against (`--brokers memory,mosquitto`).
    brokers: Vec<String>,
}

fn opts() -> Result<Opts> {
    tests::usage::exit_on_help(include_str!("mqtt_bench.rs"));
    let mut o = Opts {
        publishers: 8,
        subscribers: 20,
        messages: 10_000,
        size: 100,
        qos: QoS::AtLeastOnce,
        round_trips: 5000,
        warmup: 3000,
        connects: 4000,
        retain: false,
        rows: ROWS.iter().map(|r| r.to_string()).collect(),
        brokers: BROKERS.iter().map(|b| b.to_string()).collect(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let list = |allowed: &[&str], what: &str| -> Result<Vec<String>> {
            let v = args.get(i + 1).context("missing value")?;
            let items: Vec<String> = v.split(',').map(str::to_string).collect();
            if let Some(x) = items.iter().find(|x| !allowed.contains(&x.as_str())) {
                bail!("unknown {what} {x} ({what}s: {})", allowed.join(","));
            }
            Ok(items)
        };
        match args[i].as_str() {
            "--rows" => o.rows = list(&ROWS, "row")?,
            "--brokers" => {
                let all: Vec<&str> = BROKERS.iter().chain(&OPTIONAL_BROKERS).copied().collect();
                o.brokers = list(&all, "broker")?
            }
            _ => {}
        }
        if matches!(args[i].as_str(), "--rows" | "--brokers") {
            i += 2;
            continue;
        }
        let v: usize = args.get(i + 1).context("missing value")?.parse()?;
        match args[i].as_str() {
            "--publishers" => o.publishers = v,
            "--subscribers" => o.subscribers = v,
            "--messages" => o.messages = v,
            "--size" => o.size = v.max(16),
            "--qos" => {
                o.qos = if v == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                }
            }
            "--round-trips" => o.round_trips = v,
            "--warmup" => o.warmup = v,
            "--connects" => o.connects = v,
            "--retain" => o.retain = v != 0,
            other => bail!("unknown flag {other}"),
        }
        i += 2;
    }
    Ok(o)
}

/// A broker under test and its MQTT address; dropping it stops the broker.
struct Broker {
    name: &'static str,
    process: Process,
    addr: String,
}

enum Process {
    Cloud(Cloud),
    Edge(Edge),
    Other(Child),
}

impl Broker {
    fn pid(&self) -> u32 {
        match &self.process {
            Process::Cloud(c) => c.pid(),
            Process::Edge(e) => e.pid(),
            Process::Other(c) => c.id(),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Process::Other(child) = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_cloud(dir: &Path, name: &'static str, extra: &str) -> Result<Broker> {
    std::fs::create_dir_all(dir)?;
    let cloud = Cloud::start(dir, extra)?;
    let addr = cloud.mqtt_addr.clone();
    Ok(Broker {
        name,
        process: Process::Cloud(cloud),
        addr,
    })
}

fn start_mosquitto(dir: &Path, name: &'static str, extra: &str) -> Result<Broker> {
    let (child, addr) = mosquitto(dir, extra)?;
    Ok(Broker {
        process: Process::Other(child),
        name,
        addr,
    })
}

/// Starts Debian's Mosquitto in `dir` on a free port with `extra` configuration lines;
/// returns it once it listens, with its address.
fn mosquitto(dir: &Path, extra: &str) -> Result<(Child, String)> {
    std::fs::create_dir_all(dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg = dir.join("mosquitto.conf");
    // Unlimited queues so a slow subscriber is not silently dropped from (fair to a log).
    std::fs::write(
        &cfg,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 1000\n{extra}"),
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
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        if Instant::now() > deadline {
            bail!("mosquitto did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20)); // process start-up: no event to wait on
    }
    Ok((child, addr))
}

fn payload(size: usize, t0: Instant) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    v.put_u64(t0.elapsed().as_nanos() as u64);
    v.resize(size, b'x');
    v
}

/// What one publisher sends: `n` messages of `size` bytes.
#[derive(Clone, Copy)]
struct Load {
    n: usize,
    size: usize,
    qos: QoS,
    retain: bool,
}

/// Publishes `load.n` messages with up to `window` unacknowledged (QoS 1).
async fn publisher(addr: String, id: String, topic: String, load: Load, t0: Instant) -> Result<()> {
    let Load {
        n,
        size,
        qos,
        retain,
    } = load;
    let mut c = Conn::connect(&addr, &id).await?;
    let window = 100;
    let (mut sent, mut acked) = (0usize, 0usize);
    while acked < n {
        while sent < n && sent - acked < window {
            let pkid = (sent % 60_000 + 1) as u16;
            c.publish_retain(&topic, qos, pkid, &payload(size, t0), retain)?;
            sent += 1;
            if qos == QoS::AtMostOnce {
                acked += 1;
            }
        }
        c.flush().await?;
        if qos == QoS::AtMostOnce {
            continue;
        }
        if let Packet::PubAck(_) = c.next().await? {
            acked += 1;
        }
    }
    Ok(())
}

/// Receives `n` messages; returns per-message latencies (ns) and the last arrival time.
async fn subscriber(mut c: Conn, n: usize, t0: Instant) -> Result<(Vec<f64>, Duration)> {
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        if let Packet::Publish(p) = c.next().await? {
            let sent = u64::from_be_bytes(p.payload[..8].try_into()?);
            lat.push((t0.elapsed().as_nanos() as u64).saturating_sub(sent) as f64 / 1e6);
            if p.qos != QoS::AtMostOnce {
                Packet::PubAck(PubAck::new(p.pkid)).write(&mut c.wbuf, usize::MAX)?;
            }
            if c.rbuf.is_empty() {
                c.flush().await?;
            }
        }
    }
    c.flush().await?;
    Ok((lat, t0.elapsed()))
}

struct Row {
    msgs_s: f64,
    p50: f64,
    p99: f64,
    rss_mb: f64,
}

/// A row from per-item latencies (ms) over `took`: items/s, p50/p99, the broker's RSS.
fn row(b: &Broker, mut lat: Vec<f64>, took: Duration) -> Result<Row> {
    lat.sort_by(f64::total_cmp);
    Ok(Row {
        msgs_s: lat.len() as f64 / took.as_secs_f64(),
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        rss_mb: rss_bytes(b.pid())? as f64 / 1e6,
    })
}

async fn fan(b: &Broker, pubs: usize, subs: usize, o: &Opts, tag: &str) -> Result<Row> {
    let (filter, topic) = if pubs > 1 {
        (format!("{tag}/+"), None)
    } else {
        (format!("{tag}/t"), Some(format!("{tag}/t")))
    };
    let mut readers = Vec::new();
    for i in 0..subs {
        let mut c = Conn::connect(&b.addr, &format!("{tag}-s{i}")).await?;
        c.subscribe(&filter, o.qos).await?;
        readers.push(c);
    }
    let t0 = Instant::now();
    let total_per_sub = pubs * o.messages;
    let sub_tasks: Vec<_> = readers
        .into_iter()
        .map(|c| tokio::spawn(subscriber(c, total_per_sub, t0)))
        .collect();
    let pub_tasks: Vec<_> = (0..pubs)
        .map(|i| {
            let t = topic.clone().unwrap_or_else(|| format!("{tag}/p{i}"));
            tokio::spawn(publisher(
                b.addr.clone(),
                format!("{tag}-p{i}"),
                t,
                Load {
                    n: o.messages,
                    size: o.size,
                    qos: o.qos,
                    retain: o.retain,
                },
                t0,
            ))
        })
        .collect();
    for p in pub_tasks {
        p.await??;
    }
    let mut lat = Vec::new();
    let mut end = Duration::ZERO;
    for s in sub_tasks {
        let (l, e) = tokio::time::timeout(Duration::from_secs(300), s)
            .await
            .context("subscriber stalled")???;
        lat.extend(l);
        end = end.max(e);
    }
    row(b, lat, end)
}

async fn round_trip(b: &Broker, o: &Opts) -> Result<Row> {
    let mut sub = Conn::connect(&b.addr, "rt-s").await?;
    sub.subscribe("rt/t", QoS::AtLeastOnce).await?;
    let mut publ = Conn::connect(&b.addr, "rt-p").await?;
    let mut t0 = Instant::now();
    let mut lat = Vec::with_capacity(o.round_trips);
    for i in 0..o.warmup + o.round_trips {
        if i == o.warmup {
            t0 = Instant::now();
            lat.clear();
        }
        let start = Instant::now();
        publ.publish(
            "rt/t",
            QoS::AtLeastOnce,
            (i % 60_000 + 1) as u16,
            &payload(o.size, t0),
        )?;
        publ.flush().await?;
        loop {
            if let Packet::Publish(p) = sub.next().await? {
                Packet::PubAck(PubAck::new(p.pkid)).write(&mut sub.wbuf, usize::MAX)?;
                sub.flush().await?;
                break;
            }
        }
        lat.push(start.elapsed().as_secs_f64() * 1e3);
        loop {
            if let Packet::PubAck(_) = publ.next().await? {
                break;
            }
        }
    }
    row(b, lat, t0.elapsed())
}

/// The gateway side of the downlink row: an edge whose downlink subscribes to `cmd/#` at
/// the cloud `b`, or a Mosquitto bridged to Mosquitto `b` (dropped: stopped); its address
/// is its MQTT 3.1.1 listener.
fn gateway_for(b: &Broker, dir: &Path) -> Result<Broker> {
    let tag = b.name.replace([' ', '(', ')'], "");
    let dir = dir.join(format!("gateway-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let (process, addr) = match &b.process {
        Process::Cloud(c) => {
            let edge = Edge::start(
                &dir,
                &format!(
                    "edge_id: gw\ncloud:\n  bootstrap: {}\ndownlink:\n  broker: {}\n  filters: [cmd/#]\n",
                    c.addr, b.addr
                ),
            )?;
            let addr = edge.v4.to_string();
            (Process::Edge(edge), addr)
        }
        _ => {
            let (child, addr) = mosquitto(
                &dir,
                &format!(
                    "connection cloud\naddress {}\ntopic cmd/# in 1\ncleansession false\n",
                    b.addr
                ),
            )?;
            (Process::Other(child), addr)
        }
    };
    Ok(Broker {
        name: "gateway",
        process,
        addr,
    })
}

/// Publishes QoS 0 probes to `cmd/probe` at `cloud` until one reaches a subscriber at
/// `gateway` (the downlink or bridge has subscribed; neither announces it).
async fn wait_for_route(cloud: &str, gateway: &str) -> Result<()> {
    let mut sub = Conn::connect(gateway, "dl-probe-s").await?;
    sub.subscribe("cmd/probe", QoS::AtMostOnce).await?;
    let mut publ = Conn::connect(cloud, "dl-probe-p").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publ.publish("cmd/probe", QoS::AtMostOnce, 0, b"probe")?;
        publ.flush().await?;
        match tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            Ok(Ok(Packet::Publish(_))) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            _ if Instant::now() > deadline => bail!("no route from {cloud} to {gateway}"),
            _ => {}
        }
    }
}

async fn downlink(b: &Broker, o: &Opts, dir: &Path) -> Result<Row> {
    let gateway = gateway_for(b, dir)?;
    wait_for_route(&b.addr, &gateway.addr).await?;
    let mut sub = Conn::connect(&gateway.addr, "dl-s").await?;
    sub.subscribe("cmd/t", QoS::AtLeastOnce).await?;
    let t0 = Instant::now();
    let reader = tokio::spawn(subscriber(sub, o.messages, t0));
    let load = Load {
        n: o.messages,
        size: o.size,
        qos: QoS::AtLeastOnce,
        retain: false,
    };
    publisher(b.addr.clone(), "dl-p".into(), "cmd/t".into(), load, t0).await?;
    let (lat, end) = tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .context("gateway subscriber stalled")???;
    // The gateway side's RSS: the edge, or the bridged Mosquitto.
    row(&gateway, lat, end)
}

/// `n` connections in a row, each with a will: returns CONNECT-to-CONNACK latencies (ms).
async fn connector(addr: String, task: usize, n: usize) -> Result<Vec<f64>> {
    let mut lat = Vec::with_capacity(n);
    for j in 0..n {
        let id = format!("cw-{task}-{j}");
        let mut connect = Conn::connect_packet(&id);
        connect.last_will = Some(LastWill::new(
            format!("status/{id}"),
            "offline",
            QoS::AtLeastOnce,
            false,
        ));
        let start = Instant::now();
        let mut c = Conn::connect_with(&addr, connect).await?;
        lat.push(start.elapsed().as_secs_f64() * 1e3);
        Packet::Disconnect.write(&mut c.wbuf, usize::MAX)?;
        c.flush().await?;
    }
    Ok(lat)
}

async fn connect_storm(b: &Broker, o: &Opts) -> Result<Row> {
    let clients = o.publishers.max(1);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let n = o.connects / clients + usize::from(i < o.connects % clients);
            tokio::spawn(connector(b.addr.clone(), i, n))
        })
        .collect();
    let mut lat = Vec::with_capacity(o.connects);
    for t in tasks {
        lat.extend(t.await??);
    }
    row(b, lat, t0.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = opts()?;
    let dir = tempfile::tempdir()?;
    let wanted = |b: &str| o.brokers.iter().any(|x| x == b);
    let mut brokers = Vec::new();
    if wanted("durable") {
        brokers.push(start_cloud(
            &dir.path().join("cloud"),
            "cloud (durable)",
            "mqtt:\n  listen: 127.0.0.1:0\n",
        )?);
    }
    if wanted("sync-none") {
        brokers.push(start_cloud(
            &dir.path().join("cloud-nosync"),
            "cloud (sync none)",
            "storage:\n  sync: none\nmqtt:\n  listen: 127.0.0.1:0\n  durable_publish: false\n",
        )?);
    }
    if wanted("memory") {
        brokers.push(start_cloud(
            &dir.path().join("cloud-memory"),
            "cloud (memory)",
            "storage:\n  default_mode: memory\nmqtt:\n  listen: 127.0.0.1:0\n",
        )?);
    }
    if wanted("memory-acl") {
        brokers.push(start_cloud(
            &dir.path().join("cloud-memory-acl"),
            "cloud (memory, acl)",
            "storage:\n  default_mode: memory\nmqtt:\n  listen: 127.0.0.1:0\nacl:\n  - user: \"*\"\n    read: [\"#\"]\n    write: [\"#\"]\n    deny: [\"nothing/here\"]\n",
        )?);
    }
    if wanted("mosquitto") {
        brokers.push(start_mosquitto(
            &dir.path().join("mosquitto"),
            "mosquitto",
            "",
        )?);
    }
    if wanted("mosquitto-acl") {
        let d = dir.path().join("mosquitto-acl");
        std::fs::create_dir_all(&d)?;
        let acl = d.join("acl");
        std::fs::write(&acl, "topic readwrite #\ntopic deny nothing/here\n")?;
        let extra = format!("acl_file {}\n", acl.display());
        brokers.push(start_mosquitto(&d, "mosquitto (acl)", &extra)?);
    }
    let q = if o.qos == QoS::AtMostOnce { 0 } else { 1 };
    println!(
        "mqtt-bench: {} B payloads, QoS {q}{}; fan-in {}x{} msgs; fan-out 1x{} msgs to {} subscribers; {} QoS 1 round trips after {} untimed; {} connects with a will, {} at once",
        o.size, if o.retain { ", fan-in/out retained" } else { "" }, o.publishers, o.messages, o.messages, o.subscribers, o.round_trips, o.warmup, o.connects, o.publishers
    );
    println!(
        "{:<10} {:<20} {:>12} {:>9} {:>9} {:>8}",
        "row", "broker", "msgs/s", "p50 ms", "p99 ms", "RSS MB"
    );
    for (row, name) in ROWS.iter().enumerate() {
        if !o.rows.iter().any(|r| r == name) {
            continue;
        }
        let mut rates = Vec::new();
        for b in &brokers {
            let r = match row {
                0 => fan(b, o.publishers, 1, &o, "fi").await?,
                1 => fan(b, 1, o.subscribers, &o, "fo").await?,
                2 => round_trip(b, &o).await?,
                3 => connect_storm(b, &o).await?,
                _ => downlink(b, &o, dir.path()).await?,
            };
            println!(
                "{:<10} {:<20} {:>12.0} {:>9.2} {:>9.2} {:>8.1}",
                name, b.name, r.msgs_s, r.p50, r.p99, r.rss_mb
            );
            rates.push((b.name, r.msgs_s));
        }
        let rate = |n: &str| rates.iter().find(|(b, _)| *b == n).map(|(_, r)| *r);
        if let Some(peer) = rate("mosquitto") {
            let ratios: Vec<String> = rates
                .iter()
                .filter(|(n, _)| n.starts_with("cloud"))
                .map(|(n, r)| format!("{n} {:.2}", r / peer))
                .collect();
            println!("{name:<10} x Mosquitto: {}", ratios.join(", "));
        }
        if let (Some(ours), Some(peer)) = (rate("cloud (memory, acl)"), rate("mosquitto (acl)")) {
            let own = |with: f64, without: Option<f64>| {
                without.map_or(String::new(), |w| format!(" ({:.2} x without)", with / w))
            };
            println!(
                "{name:<10} with acl: cloud {:.2} x Mosquitto; cloud{}, Mosquitto{}",
                ours / peer,
                own(ours, rate("cloud (memory)")),
                own(peer, rate("mosquitto"))
            );
        }
    }
    Ok(())
}
