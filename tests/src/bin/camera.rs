//! camera: a QoS 1 publisher that prints every PUBACK it receives, one line each.
//!
//! The power-cut test (`tests/python/test_edge_power_cut.py`) runs it inside a virtual
//! machine beside the edge and reads its lines from the machine's serial console, so the
//! host knows which publishes were acknowledged before it pulls the plug.
//!
//!   camera --addr 127.0.0.1:1883 --run R --start S [--count N] [--topics 3]
//!          [--window 16] [--size 100]
//!
//! Publishes sequence numbers S, S+1, ... (N of them; 0 = until killed) round-robin on
//! topics `pc/t0` .. `pc/t{topics-1}` with payload `R|seq|` padded to `--size` bytes, at
//! most `--window` unacknowledged, and prints `ack R seq` for each PUBACK. It retries the
//! connection until the broker listens (the edge starts beside it).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::QoS;
use tests::mqtt::Conn;

struct Opts {
    addr: String,
    run: u64,
    start: u64,
    count: u64,
    topics: u64,
    window: usize,
    size: usize,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        addr: "127.0.0.1:1883".into(),
        run: 0,
        start: 0,
        count: 0,
        topics: 3,
        window: 16,
        size: 100,
    };
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let v = args.next().with_context(|| format!("{k} needs a value"))?;
        let n = || {
            v.parse::<u64>()
                .with_context(|| format!("{k}: not a number: {v}"))
        };
        match k.as_str() {
            "--addr" => o.addr = v.clone(),
            "--run" => o.run = n()?,
            "--start" => o.start = n()?,
            "--count" => o.count = n()?,
            "--topics" => o.topics = n()?.max(1),
            "--window" => o.window = n()?.clamp(1, 60_000) as usize,
            "--size" => o.size = n()? as usize,
            _ => bail!("unknown option {k}"),
        }
    }
    Ok(o)
}

async fn connect(o: &Opts) -> Result<Conn> {
    let id = format!("camera-{}", o.run);
    for _ in 0..600 {
        match Conn::connect(&o.addr, &id).await {
            Ok(c) => return Ok(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bail!("no broker at {} after 60 s", o.addr)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let o = opts()?;
    let mut c = connect(&o).await?;
    println!("connected {}", o.run);
    let end = if o.count == 0 {
        u64::MAX
    } else {
        o.start + o.count
    };
    let (mut next, mut pkid) = (o.start, 0u16);
    let mut inflight: HashMap<u16, u64> = HashMap::new();
    while next < end || !inflight.is_empty() {
        while next < end && inflight.len() < o.window {
            pkid = pkid % 60_000 + 1;
            let mut payload = format!("{}|{}|", o.run, next).into_bytes();
            payload.resize(o.size.max(payload.len()), b'x');
            c.publish(
                &format!("pc/t{}", next % o.topics),
                QoS::AtLeastOnce,
                pkid,
                &payload,
            )?;
            inflight.insert(pkid, next);
            next += 1;
        }
        c.flush().await?;
        if let Packet::PubAck(a) = c.next().await? {
            let seq = inflight
                .remove(&a.pkid)
                .with_context(|| format!("PUBACK for unknown packet id {}", a.pkid))?;
            println!("ack {} {}", o.run, seq);
        }
    }
    println!("done {}", o.run);
    Ok(())
}
