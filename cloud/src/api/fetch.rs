//! Fetch: whole stored batches from the requested offsets, long-polling on
//! `max_wait_ms`/`min_bytes`. Waiting is woken by appends to the requested partitions
//! (each registers this request's `Notify`), never by a sleep loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::FetchRequest;
use tokio::sync::Notify;
use tracing::warn;

use super::errors;
use crate::broker::Broker;
use crate::log::partition::PartitionLog;
use crate::wire::fetch::{Body, Partition, Topic};

/// Longest long poll honoured, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(60);

struct Slot {
    topic: usize,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    log: Result<Arc<PartitionLog>, i16>,
}

/// The response body; its record batches are spliced into the frame, not copied.
pub(super) async fn handle(broker: &Broker, req: FetchRequest, _version: i16) -> Body {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes <= 0 {
        usize::MAX
    } else {
        req.max_bytes as usize
    };
    let mut slots = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let topic = broker.log.get(t.topic.0.as_str());
        for p in &t.partitions {
            let log = match &topic {
                None => Err(errors::UNKNOWN_TOPIC_OR_PARTITION),
                Some(tp) => broker
                    .log
                    .partition(tp, p.partition)
                    .map_err(|e| errors::topic_error(&e)),
            };
            slots.push(Slot {
                topic: ti,
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                log,
            });
        }
    }
    let notify = Arc::new(Notify::new());
    let parts = loop {
        for s in &slots {
            if let Ok(l) = &s.log {
                l.register(&notify);
            }
        }
        let (parts, bytes, errored) = read_all(broker, &slots, max_bytes);
        let now = Instant::now();
        if bytes >= min_bytes.max(1) || errored || now >= deadline {
            break parts;
        }
        if tokio::time::timeout(deadline - now, notify.notified())
            .await
            .is_err()
        {
            break read_all(broker, &slots, max_bytes).0;
        }
    };
    let mut topics: Vec<Topic> = req
        .topics
        .iter()
        .map(|t| Topic {
            name: t.topic.0.clone(),
            partitions: Vec::new(),
        })
        .collect();
    for (s, p) in slots.iter().zip(parts) {
        topics[s.topic].partitions.push(p);
    }
    Body {
        error_code: 0,
        topics,
    }
}

/// Reads every slot once; returns the partitions, total record bytes, and whether any
/// partition answered with an error (which ends the long poll, as in Kafka).
fn read_all(broker: &Broker, slots: &[Slot], max_bytes: usize) -> (Vec<Partition>, usize, bool) {
    let mut total = 0usize;
    let mut errored = false;
    let mut out = Vec::with_capacity(slots.len());
    for s in slots {
        let mut pd = Partition {
            partition_index: s.partition,
            ..Default::default()
        };
        match &s.log {
            Err(code) => {
                pd.error_code = *code;
                pd.high_watermark = -1;
                pd.last_stable_offset = -1;
                pd.log_start_offset = -1;
                errored = true;
            }
            Ok(log) => {
                let hwm = log.high_watermark();
                let start = log.log_start();
                pd.high_watermark = hwm as i64;
                pd.last_stable_offset = hwm as i64;
                pd.log_start_offset = start as i64;
                if s.offset < start as i64 || s.offset > hwm as i64 {
                    pd.error_code = errors::OFFSET_OUT_OF_RANGE;
                    errored = true;
                } else if s.offset < hwm as i64 {
                    // KIP-74: the first batch is returned even if larger than the limits.
                    let budget = s.max_bytes.min(max_bytes.saturating_sub(total));
                    let limit = if total == 0 { budget.max(1) } else { budget };
                    if limit > 0 {
                        match log.read(&broker.log.store, s.offset as u64, limit) {
                            Ok(res) => {
                                let len: usize = res.batches.iter().map(|b| b.len()).sum();
                                if len > 0 && (total == 0 || len <= limit) {
                                    total += len;
                                    pd.batches = res.batches;
                                }
                                pd.high_watermark = res.high_watermark as i64;
                                pd.last_stable_offset = res.high_watermark as i64;
                                pd.log_start_offset = res.log_start as i64;
                            }
                            Err(e) => {
                                warn!(cause = %e, "fetch read failed");
                                pd.error_code = errors::KAFKA_STORAGE_ERROR;
                                errored = true;
                            }
                        }
                    }
                }
            }
        }
        out.push(pd);
    }
    (out, total, errored)
}
