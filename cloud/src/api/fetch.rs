//! Fetch: whole stored batches from the requested offsets, long-polling on
//! `max_wait_ms`/`min_bytes`. Waiting is woken by appends to the requested partitions
//! (each registers this request's `Notify`), never by a sleep loop. A member of a shared
//! group (`$shared/<name>`) gets the batches the group hands it (`groups::shared`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::FetchRequest;
use tokio::sync::Notify;
use tracing::warn;

use super::errors;
use super::Peer;
use crate::acl::{Grants, Op};
use crate::broker::Broker;
use crate::groups::shared::{self, Member, Tag};
use crate::log::batch::BatchHeader;
use crate::log::partition::PartitionLog;
use crate::source::SourceTopic;
use crate::tier::PartTier;
use crate::wire::fetch::{Body, Partition, Topic};

/// Longest long poll honoured, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(60);

struct Slot {
    topic: usize,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    log: Result<Arc<PartitionLog>, i16>,
    /// The shared group this slot is served for, and what it was handed so far.
    shared: Option<Member>,
    got: Vec<Bytes>,
    /// The topic's S3 source, if it is S3-backed (served from there, not the log).
    source: Option<Arc<SourceTopic>>,
    /// The partition's uploaded segments, if the topic is tiered.
    tier: Option<Arc<PartTier>>,
}

/// Unparks a fetch's shared slots however the fetch ends.
struct Parked<'a> {
    broker: &'a Broker,
    conn: u64,
    slots: Vec<(String, String, i32)>,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        for (g, t, p) in &self.slots {
            self.broker.groups.shares.unpark(g, t, *p, self.conn);
        }
    }
}

/// The response body; its record batches are spliced into the frame, not copied.
pub(super) async fn handle(
    broker: &Broker,
    req: FetchRequest,
    _version: i16,
    client_id: &str,
    peer: &Peer,
    grants: &Grants,
) -> Body {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes <= 0 {
        usize::MAX
    } else {
        req.max_bytes as usize
    };
    let mut slots = Vec::new();
    let tag = Tag {
        client_id: client_id.to_string(),
        host: peer.host.clone(),
    };
    for (ti, t) in req.topics.iter().enumerate() {
        let allowed = grants.may_kafka(Op::Read, t.topic.0.as_str());
        let topic = allowed
            .then(|| broker.log.get(t.topic.0.as_str()))
            .flatten();
        let source = topic.as_ref().and_then(|t| broker.sources.get(t.id));
        // Shared groups take turns over stored batches; an S3-backed topic is served
        // plainly.
        let member = topic
            .as_ref()
            .filter(|_| source.is_none())
            .and_then(|_| broker.groups.shares.classify(&tag, t.topic.0.as_str()));
        for p in &t.partitions {
            if let Some(m) = &member {
                let offset = u64::try_from(p.fetch_offset).unwrap_or(0);
                broker
                    .groups
                    .shared_start(&m.group, t.topic.0.as_str(), p.partition, offset);
            }
            let log = match &topic {
                None if !allowed => Err(errors::TOPIC_AUTHORIZATION_FAILED),
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
                shared: member.clone(),
                got: Vec::new(),
                source: source.clone(),
                // Only tiered partitions have tier state: no topic config read here.
                tier: topic
                    .as_ref()
                    .and_then(|t| broker.tiers.part(t.id, p.partition as u32)),
            });
        }
    }
    let notify = Arc::new(Notify::new());
    let topic_names: Vec<&str> = req.topics.iter().map(|t| t.topic.0.as_str()).collect();
    // Shared slots stay parked for the whole fetch: while this member waits, another
    // served last yields to it, and a batch handed to another member wakes it.
    let _parked = Parked {
        broker,
        conn: peer.id,
        slots: slots
            .iter()
            .filter_map(|s| {
                let m = s.shared.as_ref()?;
                let t = topic_names[s.topic];
                broker
                    .groups
                    .shares
                    .park(&m.group, t, s.partition, peer.id, &notify);
                Some((m.group.clone(), t.to_string(), s.partition))
            })
            .collect(),
    };
    let parts = loop {
        for s in &slots {
            match (&s.source, &s.log) {
                (Some(src), _) => src.register(&notify),
                (None, Ok(l)) => l.register(&notify),
                (None, Err(_)) => {}
            }
            if let Some(t) = &s.tier {
                t.register(&notify);
            }
        }
        let (parts, bytes, errored) =
            read_all(broker, &mut slots, max_bytes, peer.id, &topic_names);
        let now = Instant::now();
        if bytes >= min_bytes.max(1) || errored || now >= deadline {
            break parts;
        }
        if tokio::time::timeout(deadline - now, notify.notified())
            .await
            .is_err()
        {
            break read_all(broker, &mut slots, max_bytes, peer.id, &topic_names).0;
        }
    };
    let sent: usize = parts
        .iter()
        .flat_map(|p| p.batches.iter())
        .map(|b| b.len())
        .sum();
    crate::metrics::get().fetch_bytes.inc_by(sent as u64);
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
fn read_all(
    broker: &Broker,
    slots: &mut [Slot],
    max_bytes: usize,
    conn: u64,
    topics: &[&str],
) -> (Vec<Partition>, usize, bool) {
    let mut total: usize = slots.iter().flat_map(|s| &s.got).map(|b| b.len()).sum();
    let mut errored = false;
    let mut out = Vec::with_capacity(slots.len());
    for s in slots.iter_mut() {
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
            Ok(_) if s.source.is_some() => {
                let src = s.source.as_ref().expect("checked");
                let part = s.partition as u32;
                let hwm = src.end(part);
                pd.high_watermark = hwm as i64;
                pd.last_stable_offset = hwm as i64;
                pd.log_start_offset = 0;
                if s.offset < 0 || s.offset > hwm as i64 {
                    pd.error_code = errors::OFFSET_OUT_OF_RANGE;
                    errored = true;
                } else if s.offset < hwm as i64 {
                    let budget = s.max_bytes.min(max_bytes.saturating_sub(total));
                    if budget > 0 || total == 0 {
                        let r = broker.sources.read(
                            src,
                            part,
                            s.offset as u64,
                            budget,
                            total == 0,
                            conn,
                        );
                        total += r.batches.iter().map(|b| b.len()).sum::<usize>();
                        pd.high_watermark = r.high_watermark as i64;
                        pd.last_stable_offset = r.high_watermark as i64;
                        pd.batches = r.batches;
                    }
                }
            }
            Ok(log) => {
                let hwm = log.high_watermark();
                let local_start = log.log_start();
                // A tiered partition starts at its first uploaded segment.
                let start = s
                    .tier
                    .as_ref()
                    .and_then(|t| t.start())
                    .map_or(local_start, |t| t.min(local_start));
                pd.high_watermark = hwm as i64;
                pd.last_stable_offset = hwm as i64;
                pd.log_start_offset = start as i64;
                if s.offset < start as i64 || s.offset > hwm as i64 {
                    pd.error_code = errors::OFFSET_OUT_OF_RANGE;
                    errored = true;
                } else if let Some(m) = &s.shared {
                    let budget = s
                        .max_bytes
                        .min(max_bytes.saturating_sub(total))
                        .min(shared::FETCH_BYTES);
                    if s.offset < hwm as i64 && (budget > 0 || total == 0) {
                        // Past what this fetch already got: a member's offsets only grow.
                        let from = s
                            .got
                            .last()
                            .and_then(|b| BatchHeader::parse(b).ok())
                            .map(|h| h.base_offset as u64 + h.offset_count())
                            .unwrap_or(s.offset as u64);
                        let ask = shared::Ask {
                            who: m,
                            topic: topics[s.topic],
                            partition: s.partition,
                            conn,
                            offset: from,
                        };
                        let got =
                            broker
                                .groups
                                .shares
                                .dispatch(&ask, budget, |o, n| match &s.tier {
                                    Some(t) if o < log.log_start() => {
                                        Ok(broker.tiers.read(t, o, n, true, conn))
                                    }
                                    _ => log.read(&broker.log.store, o, n).map(|r| r.batches),
                                });
                        match got {
                            Ok(b) => {
                                total += b.iter().map(|b| b.len()).sum::<usize>();
                                s.got.extend(b);
                            }
                            Err(e) => {
                                warn!(cause = %e, "fetch read failed");
                                pd.error_code = errors::KAFKA_STORAGE_ERROR;
                                errored = true;
                            }
                        }
                    }
                    pd.batches = s.got.clone();
                } else if let (Some(t), true) = (&s.tier, s.offset < local_start as i64) {
                    // Below the local start of a tiered partition: from its segments.
                    let budget = s.max_bytes.min(max_bytes.saturating_sub(total));
                    if budget > 0 || total == 0 {
                        let b = broker
                            .tiers
                            .read(t, s.offset as u64, budget, total == 0, conn);
                        total += b.iter().map(|b| b.len()).sum::<usize>();
                        pd.batches = b;
                    }
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
                                pd.log_start_offset = res.log_start.min(start) as i64;
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

#[cfg(test)]
#[path = "fetch_tests.rs"]
mod tests;
