//! Produce: validates each partition's record set, appends it (offsets assigned here,
//! idempotent sequences checked), and answers once the write is durable for acks=all.
//! Partitions of one request are appended concurrently so they share group commits.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use tracing::{debug, info, warn};

use super::{errors, Reply};
use crate::acl::{Grants, Op};
use crate::broker::Broker;
use crate::log::{batch, TopicError};
use crate::mqtt::Hub;

const MESSAGE_TOO_LARGE: i16 = 10;

struct Outcome {
    code: i16,
    base_offset: i64,
    log_start: i64,
    message: Option<String>,
}

impl Outcome {
    fn err(code: i16, message: impl Into<String>) -> Outcome {
        Outcome {
            code,
            base_offset: -1,
            log_start: -1,
            message: Some(message.into()),
        }
    }
}

async fn append_one(
    broker: &Broker,
    grants: &Grants,
    topic: &str,
    index: i32,
    records: Option<Bytes>,
    acks: i16,
    timeout: Duration,
) -> Outcome {
    if !grants.may_kafka(Op::Write, topic) {
        return Outcome::err(errors::TOPIC_AUTHORIZATION_FAILED, errors::NOT_ALLOWED);
    }
    let Some(t) = broker.log.get(topic) else {
        return Outcome::err(errors::UNKNOWN_TOPIC_OR_PARTITION, "unknown topic");
    };
    if t.read_only() {
        let e = TopicError::ReadOnly;
        return Outcome::err(errors::topic_error(&e), e.to_string());
    }
    let part = match broker.log.partition(&t, index) {
        Ok(p) => p,
        Err(e) => return Outcome::err(errors::topic_error(&e), e.to_string()),
    };
    let Some(records) = records else {
        return Outcome::err(errors::CORRUPT_MESSAGE, "null record set");
    };
    let batches = match batch::split(&records) {
        Ok(b) if !b.is_empty() => b,
        Ok(_) => return Outcome::err(errors::CORRUPT_MESSAGE, "empty record set"),
        Err(e) => {
            info!(topic, partition = index, cause = %e, "corrupt record set rejected");
            return Outcome::err(errors::CORRUPT_MESSAGE, e.to_string());
        }
    };
    let max = t
        .config("max.message.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1_048_588);
    if let Some(big) = batches.iter().find(|b| b.len() > max) {
        return Outcome::err(
            MESSAGE_TOO_LARGE,
            format!(
                "batch of {} bytes exceeds max.message.bytes {max}",
                big.len()
            ),
        );
    }
    if t.compacted() {
        if let Some(e) = batches.iter().find_map(|b| keyless(b).err()) {
            return Outcome::err(e.0, e.1);
        }
    }
    let stored_bytes: usize = batches.iter().map(|b| b.len()).sum();
    let check = broker.mqtt.get().map(|hub| (hub, batches.clone()));
    // Which batches set a retained MQTT message (every compressed batch is decompressed
    // for that) is found while the store writes and syncs the append. It waits one turn
    // first, so that every partition of the request has queued its write (one group
    // commit) before any check runs.
    let (appended, retaining) =
        tokio::join!(part.append(&broker.log.store, batches, acks == -1), async {
            let (hub, batches) = check?;
            tokio::task::yield_now().await;
            Some((hub, Hub::retaining(batches)?))
        });
    match appended {
        Ok(a) => {
            if !a.duplicate {
                crate::metrics::get()
                    .produce_bytes
                    .inc_by(stored_bytes as u64);
            }
            if let (Some((hub, b)), false) = (retaining, a.duplicate) {
                hub.kafka_produced(topic, &b).await;
            }
            if a.duplicate
                && tokio::time::timeout(timeout, part.wait_visible(a.end_offset))
                    .await
                    .is_err()
            {
                return Outcome::err(
                    errors::KAFKA_STORAGE_ERROR,
                    "duplicate of a batch still being written",
                );
            }
            Outcome {
                code: errors::NONE,
                base_offset: a.base_offset as i64,
                log_start: part.log_start() as i64,
                message: None,
            }
        }
        Err(e) => {
            if matches!(e, crate::log::partition::AppendError::Storage(_)) {
                warn!(topic, partition = index, cause = %e, "append failed");
            } else if matches!(e, crate::log::partition::AppendError::Corrupt(_)) {
                info!(topic, partition = index, cause = %e, "corrupt record set rejected");
            } else {
                debug!(topic, partition = index, cause = %e, "append refused");
            }
            Outcome::err(errors::append_error(&e), e.to_string())
        }
    }
}

/// A compacted topic keeps the newest record per key, so every record needs one (Kafka's
/// INVALID_RECORD, with its message). The batch is decoded for that.
fn keyless(b: &Bytes) -> Result<(), (i16, String)> {
    match batch::records(b) {
        Ok(rs) if rs.iter().all(|r| r.key.is_some()) => Ok(()),
        Ok(_) => Err((
            errors::INVALID_RECORD,
            "Compacted topic cannot accept message without key".into(),
        )),
        Err(e) => Err((errors::CORRUPT_MESSAGE, e)),
    }
}

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: ProduceRequest,
    _version: i16,
) -> Reply {
    let acks = req.acks;
    let timeout = Duration::from_millis(req.timeout_ms.clamp(1, 300_000) as u64);
    let mut futures = Vec::new();
    for t in &req.topic_data {
        for p in &t.partition_data {
            if !matches!(acks, -1..=1) || req.transactional_id.is_some() {
                continue;
            }
            futures.push(append_one(
                broker,
                grants,
                t.name.0.as_str(),
                p.index,
                p.records.clone(),
                acks,
                timeout,
            ));
        }
    }
    let mut outcomes = join_all(futures).await.into_iter();
    if acks == 0 {
        return Reply::Nothing;
    }
    let mut r = ProduceResponse::default();
    for t in req.topic_data {
        let mut rt = TopicProduceResponse::default();
        for p in t.partition_data {
            let o = if req.transactional_id.is_some() {
                Outcome::err(
                    errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    "transactions are not supported",
                )
            } else if !matches!(acks, -1..=1) {
                Outcome::err(errors::INVALID_REQUIRED_ACKS, "acks must be -1, 0 or 1")
            } else {
                outcomes.next().unwrap_or_else(|| {
                    Outcome::err(errors::UNKNOWN_SERVER_ERROR, "missing outcome")
                })
            };
            let mut rp = PartitionProduceResponse::default();
            rp.index = p.index;
            rp.error_code = o.code;
            rp.base_offset = o.base_offset;
            rp.log_append_time_ms = -1;
            rp.log_start_offset = o.log_start;
            rp.error_message = o.message.map(StrBytes::from_string);
            rt.partition_responses.push(rp);
        }
        rt.name = t.name;
        r.responses.push(rt);
    }
    Reply::message(ResponseKind::Produce(r))
}
