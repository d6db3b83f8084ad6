//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), or the first offset whose
//! record timestamp is at or after the given time.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::records::RecordBatchDecoder;

use super::errors;
use crate::acl::Grants;
use crate::broker::Broker;
use crate::log::batch::BatchHeader;
use crate::log::partition::PartitionLog;
use crate::storage::Store;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const CHUNK: usize = 256;

/// (offset, timestamp) of the first record with timestamp >= `ts`, or of the record with
/// the largest timestamp when `ts` is None.
fn search(
    store: &Store,
    log: &PartitionLog,
    ts: Option<i64>,
) -> Result<Option<(i64, i64)>, crate::storage::Error> {
    let hwm = log.high_watermark();
    let mut from = log.log_start();
    let mut best: Option<(i64, bytes::Bytes)> = None;
    loop {
        let chunk = log.scan(store, from, CHUNK)?;
        let n = chunk.len();
        for (base, b) in &chunk {
            if *base < from {
                continue;
            }
            if *base >= hwm {
                return Ok(best.and_then(|(_, b)| pick(&b, ts)));
            }
            let Ok(h) = BatchHeader::parse(b) else {
                continue;
            };
            match ts {
                Some(t) if h.max_timestamp >= t => return Ok(pick(b, ts)),
                Some(_) => {}
                None => {
                    if best.as_ref().is_none_or(|(m, _)| h.max_timestamp > *m) {
                        best = Some((h.max_timestamp, b.clone()));
                    }
                }
            }
        }
        match chunk.last() {
            Some((base, _)) if n == CHUNK => from = base + 1,
            _ => return Ok(best.and_then(|(_, b)| pick(&b, ts))),
        }
    }
}

/// The first record at or after `ts` in a tiered partition's uploaded segments (`None`
/// if the segment could not be loaded in time).
async fn tiered_search(broker: &Broker, topic_id: u32, p: u32, ts: i64) -> Option<(i64, i64)> {
    let pt = broker.tiers.part(topic_id, p)?;
    let (index, seg) = pt.segment_for_time(ts)?;
    let l = broker
        .tiers
        .loaded(
            &pt,
            index,
            seg.key.clone(),
            std::time::Duration::from_secs(10),
        )
        .await?;
    l.spans
        .iter()
        .map(|s| l.bytes.slice(s.value.start as usize..s.value.end as usize))
        .filter(|b| BatchHeader::parse(b).is_ok_and(|h| h.max_timestamp >= ts))
        .find_map(|b| pick(&b, Some(ts)))
        .or(Some((seg.base as i64, ts)))
}

fn pick(batch: &bytes::Bytes, ts: Option<i64>) -> Option<(i64, i64)> {
    let mut b = batch.clone();
    let set = RecordBatchDecoder::decode(&mut b).ok()?;
    match ts {
        Some(t) => set
            .records
            .iter()
            .find(|r| r.timestamp >= t)
            .map(|r| (r.offset, r.timestamp)),
        None => set
            .records
            .iter()
            .max_by_key(|r| r.timestamp)
            .map(|r| (r.offset, r.timestamp)),
    }
}

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut r = ListOffsetsResponse::default();
    for t in req.topics {
        // Kafka asks for Describe, which Read and Write imply.
        let allowed = grants.sees_kafka(t.name.0.as_str());
        let topic = allowed.then(|| broker.log.get(t.name.0.as_str())).flatten();
        let mut rt = ListOffsetsTopicResponse::default();
        for p in t.partitions {
            let mut rp = ListOffsetsPartitionResponse::default();
            rp.partition_index = p.partition_index;
            rp.timestamp = -1;
            rp.offset = -1;
            if version >= 4 {
                rp.leader_epoch = 0;
            }
            let log = match &topic {
                None if !allowed => Err(errors::TOPIC_AUTHORIZATION_FAILED),
                None => Err(errors::UNKNOWN_TOPIC_OR_PARTITION),
                Some(tp) => broker
                    .log
                    .partition(tp, p.partition_index)
                    .map_err(|e| errors::topic_error(&e)),
            };
            let source = topic.as_ref().and_then(|t| broker.sources.get(t.id));
            match log {
                Err(code) => rp.error_code = code,
                Ok(_) if source.is_some() => {
                    let s = source.as_ref().expect("checked");
                    let part = p.partition_index as u32;
                    match p.timestamp {
                        LATEST => rp.offset = s.end(part) as i64,
                        EARLIEST => rp.offset = 0,
                        ts => {
                            let ts = (ts != MAX_TIMESTAMP).then_some(ts);
                            if let Some((o, t)) = s.offset_for_time(part, ts) {
                                rp.offset = o as i64;
                                rp.timestamp = t;
                            }
                        }
                    }
                }
                Ok(log) => match p.timestamp {
                    LATEST => rp.offset = log.high_watermark() as i64,
                    EARLIEST => {
                        let tier = broker.tiers.part(log.topic_id, log.index);
                        let start = tier.and_then(|t| t.start()).unwrap_or(u64::MAX);
                        rp.offset = start.min(log.log_start()) as i64;
                    }
                    ts if ts >= 0
                        && broker
                            .tiers
                            .part(log.topic_id, log.index)
                            .and_then(|t| t.offset_for_time(ts))
                            .is_some_and(|o| o < log.log_start()) =>
                    {
                        // In an uploaded segment (the first whose newest record is at or
                        // after `ts` holds the answer): read it.
                        match tiered_search(broker, log.topic_id, log.index, ts).await {
                            Some((offset, timestamp)) => {
                                rp.offset = offset;
                                rp.timestamp = timestamp;
                            }
                            None => rp.error_code = errors::KAFKA_STORAGE_ERROR,
                        }
                    }
                    ts => {
                        let target = if ts == MAX_TIMESTAMP { None } else { Some(ts) };
                        match search(&broker.log.store, &log, target) {
                            Ok(Some((offset, timestamp))) => {
                                rp.offset = offset;
                                rp.timestamp = timestamp;
                            }
                            Ok(None) => {}
                            Err(_) => rp.error_code = errors::KAFKA_STORAGE_ERROR,
                        }
                    }
                },
            }
            rt.partitions.push(rp);
        }
        rt.name = t.name;
        r.topics.push(rt);
    }
    r
}
