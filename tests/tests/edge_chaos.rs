//! Chaos test for the edge's uplink (issue 3): a camera simulator (rumqttc) publishes
//! QoS 1 to the edge on several topics while a fault proxy between the edge and the cloud
//! cuts, stalls and restores the uplink, and the edge and the cloud are each killed with
//! SIGKILL and restarted on their data directories. Then kcat reads every topic from the
//! cloud: every acknowledged publish exactly once, per-topic order intact, headers, key
//! and timestamps (the edge's receive time) as the design brief specifies. A local MQTT
//! subscriber on the edge receives the publishes made while the uplink is cut.
//!
//! Needs the `cloud` and `edge` binaries (`cargo build --workspace`, or CLOUD_BIN and
//! EDGE_BIN) and `kcat` on the PATH.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tests::faultproxy::{FaultProxy, Mode};
use tests::proc::{Cloud, Edge};

const TOPICS: usize = 3;
const CAMERA_ID: &str = "cam-sim";
const EDGE_ID: &str = "chaos-edge";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn topic(t: usize) -> String {
    format!("cam/{t}")
}

/// One publish of the camera.
#[derive(Debug, Clone)]
struct Sent {
    topic: usize,
    seq: u32,
    sent_ms: i64,
    acked_ms: Option<i64>,
}

fn payload(topic: usize, seq: u32) -> String {
    format!("{topic}|{seq:08}|{}", "frame-metadata ".repeat(8))
}

fn parse_payload(p: &str) -> Option<(usize, u32)> {
    let mut it = p.split('|');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Shared state of the MQTT clients and the test.
#[derive(Default)]
struct Sim {
    sent: Mutex<Vec<Sent>>,
    /// (topic, seq) seen by the local subscriber.
    local: Mutex<HashSet<(usize, u32)>>,
    stop: AtomicBool,
}

impl Sim {
    fn acked(&self) -> usize {
        let sent = self.sent.lock().unwrap();
        sent.iter().filter(|s| s.acked_ms.is_some()).count()
    }
}

fn mqtt_options(id: &str, addr: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_session(true);
    o.set_inflight(50);
    o
}

/// Publishes QoS 1 round-robin over the topics, one every few milliseconds, recording
/// which were acknowledged. Every (topic, seq) is published once: when the connection
/// breaks (edge killed) the publishes in flight are given up, never resent, so any
/// duplicate in the cloud is the system's fault and not QoS 1 at-least-once.
async fn camera(edge: Arc<Mutex<SocketAddr>>, sim: Arc<Sim>) {
    let mut next = [0u32; TOPICS];
    let mut turn = 0usize;
    loop {
        let addr = *edge.lock().unwrap();
        let (client, mut events) = AsyncClient::new(mqtt_options(CAMERA_ID, addr), 10);
        let mut queued = VecDeque::new();
        let mut in_flight = HashMap::new();
        let mut connected = false;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            let stopping = sim.stop.load(Ordering::Relaxed);
            if stopping && queued.is_empty() && in_flight.is_empty() {
                return;
            }
            tokio::select! {
                _ = tick.tick(), if connected && !stopping => {
                    let t = turn % TOPICS;
                    let p = payload(t, next[t]);
                    let sent_ms = now_ms();
                    if client.try_publish(topic(t), QoS::AtLeastOnce, false, p).is_ok() {
                        let mut sent = sim.sent.lock().unwrap();
                        queued.push_back(sent.len());
                        sent.push(Sent { topic: t, seq: next[t], sent_ms, acked_ms: None });
                        next[t] += 1;
                        turn += 1;
                    }
                }
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => connected = true,
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(i) = queued.pop_front() {
                            in_flight.insert(pkid, i);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(i) = in_flight.remove(&ack.pkid) {
                            sim.sent.lock().unwrap()[i].acked_ms = Some(now_ms());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        // The edge went away: what was in flight is unacknowledged for good.
        if sim.stop.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A local subscriber on the edge's MQTT side (cam/#, QoS 1), reconnecting as needed.
async fn local_subscriber(edge: Arc<Mutex<SocketAddr>>, sim: Arc<Sim>) {
    while !sim.stop.load(Ordering::Relaxed) {
        let addr = *edge.lock().unwrap();
        let (client, mut events) = AsyncClient::new(mqtt_options("local-sub", addr), 10);
        if client.try_subscribe("cam/#", QoS::AtLeastOnce).is_err() {
            return;
        }
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                if let Some(k) = std::str::from_utf8(&p.payload).ok().and_then(parse_payload) {
                    sim.local.lock().unwrap().insert(k);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A record read back by kcat.
#[derive(Debug)]
struct Rec {
    ts: i64,
    key: String,
    headers: HashMap<String, String>,
    payload: String,
}

/// Reads a whole topic with kcat (librdkafka), from the beginning to its end.
fn kcat_read(bootstrap: &str, topic: &str) -> Result<Vec<Rec>> {
    let out = Command::new("kcat")
        .args([
            "-C",
            "-b",
            bootstrap,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .args(["-f", "%T\t%k\t%h\t%s\n"])
        .output()
        .context("running kcat")?;
    ensure!(
        out.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '\t').collect();
            ensure!(f.len() == 4, "kcat line {l:?}");
            let headers = f[2]
                .split(',')
                .filter_map(|h| h.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Ok(Rec {
                ts: f[0].parse()?,
                key: f[1].to_string(),
                headers,
                payload: f[3].to_string(),
            })
        })
        .collect()
}

fn edge_yaml(proxy: SocketAddr) -> String {
    format!(
        "edge_id: {EDGE_ID}\n\
         cloud:\n  bootstrap: {proxy}\n  request_timeout_ms: 1000\n  \
         backoff_initial_ms: 50\n  backoff_max_ms: 300\n\
         uplink:\n  filters:\n    - filter: \"cam/#\"\n      priority: 1\n"
    )
}

fn restart_edge(edge: &mut Edge, dir: &Path, yaml: &str, addr: &Mutex<SocketAddr>) -> Result<()> {
    edge.kill()?;
    *edge = Edge::start(dir, yaml)?;
    *addr.lock().unwrap() = edge.v4;
    Ok(())
}

#[test]
fn uplink_cuts_stalls_and_kills_keep_exactly_once_in_order() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let result = chaos(tmp.path());
    if result.is_err() {
        // Keep the evidence: both data directories and logs.
        let dir = tmp.keep();
        for log in ["edge/edge.log", "cloud/cloud.log"] {
            let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            eprintln!(
                "--- {log} (last 20 lines, newest first)\n{}",
                tail.join("\n")
            );
        }
        eprintln!("kept {}", dir.display());
    }
    result
}

fn chaos(tmp: &Path) -> Result<()> {
    let started = Instant::now();
    let (cloud_dir, edge_dir) = (tmp.join("cloud"), tmp.join("edge"));
    std::fs::create_dir_all(&cloud_dir)?;
    std::fs::create_dir_all(&edge_dir)?;

    // The cloud advertises the proxy, so the edge reaches it only through the proxy.
    let proxy = FaultProxy::start("127.0.0.1:9".parse()?)?;
    let advertise = format!("  advertised_port: {}\n", proxy.addr().port());
    let mut cloud = Cloud::start_on(&cloud_dir, "127.0.0.1:0", &advertise, "")?;
    let cloud_addr = cloud.addr.clone();
    proxy.set_upstream(cloud_addr.parse()?);
    let yaml = edge_yaml(proxy.addr());
    let mut edge = Edge::start(&edge_dir, &yaml)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sim = Arc::new(Sim::default());
    let edge_addr = Arc::new(Mutex::new(edge.v4));
    rt.spawn(local_subscriber(edge_addr.clone(), sim.clone()));
    let cam = rt.spawn(camera(edge_addr.clone(), sim.clone()));

    let up = |e: &Edge| -> Result<bool> { Ok(e.metric("edge_uplink_up")? == 1.0) };
    let replicated = |e: &Edge| e.metric("edge_uplink_records_total");
    let t = Duration::from_secs(20);
    wait_until("records to reach the cloud", t, || {
        Ok(replicated(&edge)? > 50.0)
    })?;
    wait_until("the local subscriber", t, || {
        Ok(!sim.local.lock().unwrap().is_empty())
    })?;

    // 1. Cut: the edge sees the uplink go down; publishing and local delivery go on.
    proxy.set(Mode::Cut);
    let cut_from = now_ms();
    wait_until("the edge to see the cut", t, || Ok(!up(&edge)?))?;
    std::thread::sleep(Duration::from_secs(2));
    let cut_to = now_ms();
    proxy.restore();
    wait_until("the uplink after the cut", t, || up(&edge))?;

    // 2. Stall: connections stay open and nothing moves for longer than the edge's
    //    Produce timeout (request_timeout_ms + 5 s); held bytes are delivered late.
    let before = replicated(&edge)?;
    proxy.set(Mode::Stall);
    std::thread::sleep(Duration::from_secs(7));
    proxy.restore();
    wait_until("replication after the stall", t, || {
        Ok(replicated(&edge)? > before)
    })?;

    // 3. SIGKILL the edge mid-stream and restart it on its buffer.
    restart_edge(&mut edge, &edge_dir, &yaml, &edge_addr)?;
    let acked = sim.acked();
    wait_until("acks from the restarted edge", t, || {
        Ok(sim.acked() > acked + 50)
    })?;

    // 4. SIGKILL the cloud while the edge replicates; restart it on its data dir.
    cloud.kill()?;
    std::thread::sleep(Duration::from_millis(500));
    cloud = Cloud::start_on(&cloud_dir, &cloud_addr, &advertise, "")?;
    let before = replicated(&edge)?;
    wait_until("replication to the restarted cloud", t, || {
        Ok(replicated(&edge)? > before + 50.0)
    })?;

    // 5. Cut again and kill the edge during the cut; restore after it restarted.
    proxy.set(Mode::Cut);
    std::thread::sleep(Duration::from_millis(700));
    restart_edge(&mut edge, &edge_dir, &yaml, &edge_addr)?;
    let acked = sim.acked();
    wait_until("acks while cut", t, || Ok(sim.acked() > acked + 50))?;
    proxy.restore();

    // Stop the camera (it waits for the acks of what is in flight) and let the edge drain.
    std::thread::sleep(Duration::from_millis(500));
    sim.stop.store(true, Ordering::Relaxed);
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), cam).await })??;
    wait_until("the edge backlog to drain", Duration::from_secs(30), || {
        Ok(edge.metric("edge_backlog_records")? == 0.0 && up(&edge)?)
    })
    .map_err(|e| {
        let m = edge.metrics().unwrap_or_default();
        let mut m: Vec<_> = m
            .into_iter()
            .filter(|(k, _)| k.starts_with("edge_"))
            .collect();
        m.sort_by(|a, b| a.0.cmp(&b.0));
        e.context(format!("edge metrics: {m:?}"))
    })?;

    let sent = sim.sent.lock().unwrap().clone();
    let by_key: HashMap<(usize, u32), &Sent> = sent.iter().map(|s| ((s.topic, s.seq), s)).collect();
    let mut total_cloud = 0;
    for t in 0..TOPICS {
        let recs = kcat_read(&proxy.addr().to_string(), &format!("cam.{t}"))?;
        total_cloud += recs.len();
        let mut last = None;
        let mut present = HashSet::new();
        for r in &recs {
            let (rt_, seq) = parse_payload(&r.payload).context("payload")?;
            ensure!(rt_ == t, "cam.{t}: record of topic {rt_}");
            ensure!(
                last < Some(seq),
                "cam.{t}: seq {seq} after {last:?} (duplicate or reorder)"
            );
            last = Some(seq);
            present.insert(seq);
            let s = by_key.get(&(t, seq)).context("a record nobody published")?;
            ensure!(r.key == CAMERA_ID, "key {:?}", r.key);
            ensure!(
                r.headers.get("mqtt.topic") == Some(&topic(t)),
                "{:?}",
                r.headers
            );
            ensure!(r.headers.get("mqtt.qos").map(String::as_str) == Some("1"));
            ensure!(r.headers.get("edge.id").map(String::as_str) == Some(EDGE_ID));
            // CreateTime is the edge's receive time: after the send, before the ack.
            ensure!(
                r.ts >= s.sent_ms,
                "cam.{t}/{seq}: ts {} before send {}",
                r.ts,
                s.sent_ms
            );
            if let Some(a) = s.acked_ms {
                ensure!(r.ts <= a, "cam.{t}/{seq}: ts {} after the ack {a}", r.ts);
            }
        }
        let missing: Vec<u32> = sent
            .iter()
            .filter(|s| s.topic == t && s.acked_ms.is_some() && !present.contains(&s.seq))
            .map(|s| s.seq)
            .collect();
        ensure!(
            missing.is_empty(),
            "cam.{t}: acknowledged but missing: {missing:?}"
        );
    }

    // The local subscriber received every acknowledged publish made during the cut.
    let local = sim.local.lock().unwrap();
    let during_cut: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.acked_ms.is_some() && (cut_from..cut_to).contains(&s.sent_ms))
        .collect();
    ensure!(
        during_cut.len() > 50,
        "only {} publishes during the cut",
        during_cut.len()
    );
    let unseen = during_cut
        .iter()
        .filter(|s| !local.contains(&(s.topic, s.seq)))
        .count();
    ensure!(
        unseen == 0,
        "{unseen} publishes made during the cut never reached the local subscriber"
    );

    ensure!(
        cloud.child.try_wait()?.is_none(),
        "the restarted cloud died"
    );
    let acked = sent.iter().filter(|s| s.acked_ms.is_some()).count();
    println!(
        "published {}, acknowledged {acked}, in the cloud {total_cloud}, during the cut {}, \
         proxy connections {}, {:.1}s",
        sent.len(),
        during_cut.len(),
        proxy.accepted(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A half-open uplink (the proxy accepts and then moves no byte) while the edge connects:
/// the edge must give up and reconnect rather than wait forever.
/// The connection (TCP, TLS, ApiVersions, SASL), InitProducerId and Metadata are each
/// bounded by `request_timeout_ms`.
#[test]
fn half_open_uplink_while_connecting_is_abandoned() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (cloud_dir, edge_dir) = (tmp.path().join("cloud"), tmp.path().join("edge"));
    std::fs::create_dir_all(&cloud_dir)?;
    std::fs::create_dir_all(&edge_dir)?;
    let proxy = FaultProxy::start("127.0.0.1:9".parse()?)?;
    let advertise = format!("  advertised_port: {}\n", proxy.addr().port());
    let cloud = Cloud::start_on(&cloud_dir, "127.0.0.1:0", &advertise, "")?;
    proxy.set_upstream(cloud.addr.parse()?);
    proxy.set(Mode::Stall);
    let edge = Edge::start(&edge_dir, &edge_yaml(proxy.addr()))?;
    // request_timeout_ms is 1000: a reconnect within 15 s means the stall was noticed.
    wait_until(
        "a second connection attempt",
        Duration::from_secs(15),
        || Ok(proxy.accepted() >= 2),
    )?;
    proxy.restore();
    wait_until("the uplink", Duration::from_secs(15), || {
        Ok(edge.metric("edge_uplink_up")? == 1.0)
    })
}
