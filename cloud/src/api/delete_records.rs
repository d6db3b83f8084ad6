//! DeleteRecords: moves partitions' start forward (`AdminClient.delete_records`,
//! `kafka-delete-records`; Kafka Streams purges its repartition topics with it). Offset
//! -1 means the high watermark. The new start is stored durably before the answer
//! (`PartitionLog::delete_records`). Tiered and S3-backed topics refuse it.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use tracing::warn;

use super::errors;
use crate::acl::{Grants, Op};
use crate::broker::Broker;
use crate::log::{StorageMode, Topic};

/// Deletes the records of one partition below `offset`; the new start, or an error code.
async fn delete_one(
    broker: &Broker,
    topic: Option<&Topic>,
    partition: i32,
    offset: i64,
) -> Result<u64, i16> {
    let topic = topic.ok_or(errors::UNKNOWN_TOPIC_OR_PARTITION)?;
    if topic.read_only() || topic.mode() == StorageMode::Tiered {
        return Err(errors::POLICY_VIOLATION);
    }
    let part = broker
        .log
        .partition(topic, partition)
        .map_err(|e| errors::topic_error(&e))?;
    let hwm = part.high_watermark();
    let before = if offset == -1 { hwm as i64 } else { offset };
    if before < 0 || before as u64 > hwm {
        return Err(errors::OFFSET_OUT_OF_RANGE);
    }
    let _order = broker.log.rewrites.lock().await;
    part.delete_records(&broker.log.store, before as u64)
        .await
        .map_err(|e| {
            warn!(topic = %topic.name, partition, cause = %e, "delete records failed");
            errors::KAFKA_STORAGE_ERROR
        })
}

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let mut r = DeleteRecordsResponse::default();
    for t in req.topics {
        let allowed = grants.may_kafka(Op::Admin, t.name.as_str());
        let topic = broker.log.get(t.name.as_str());
        let mut out = DeleteRecordsTopicResult::default();
        out.name = t.name.clone();
        for p in t.partitions {
            let mut res = DeleteRecordsPartitionResult::default();
            res.partition_index = p.partition_index;
            let outcome = match allowed {
                false => Err(errors::TOPIC_AUTHORIZATION_FAILED),
                true => delete_one(broker, topic.as_deref(), p.partition_index, p.offset).await,
            };
            match outcome {
                Ok(start) => res.low_watermark = start as i64,
                Err(code) => {
                    res.low_watermark = -1;
                    res.error_code = code;
                }
            }
            out.partitions.push(res);
        }
        r.topics.push(out);
    }
    r
}
