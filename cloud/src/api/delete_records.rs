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
use crate::broker::Broker;
use crate::log::StorageMode;

pub(super) async fn handle(
    broker: &Broker,
    req: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let mut r = DeleteRecordsResponse::default();
    for t in req.topics {
        let topic = broker.log.get(t.name.as_str());
        let mut out = DeleteRecordsTopicResult::default();
        out.name = t.name.clone();
        for p in t.partitions {
            let mut res = DeleteRecordsPartitionResult::default();
            res.partition_index = p.partition_index;
            res.low_watermark = -1;
            res.error_code = match &topic {
                None => errors::UNKNOWN_TOPIC_OR_PARTITION,
                Some(tp) if tp.read_only() || tp.mode() == StorageMode::Tiered => {
                    errors::POLICY_VIOLATION
                }
                Some(tp) => match broker.log.partition(tp, p.partition_index) {
                    Err(e) => errors::topic_error(&e),
                    Ok(part) => {
                        let hwm = part.high_watermark();
                        let before = if p.offset == -1 { hwm as i64 } else { p.offset };
                        if before < 0 || before as u64 > hwm {
                            errors::OFFSET_OUT_OF_RANGE
                        } else {
                            let _order = broker.log.rewrites.lock().await;
                            match part.delete_records(&broker.log.store, before as u64).await {
                                Ok(start) => {
                                    res.low_watermark = start as i64;
                                    errors::NONE
                                }
                                Err(e) => {
                                    warn!(topic = %t.name.as_str(), partition = p.partition_index,
                                          cause = %e, "delete records failed");
                                    errors::KAFKA_STORAGE_ERROR
                                }
                            }
                        }
                    }
                },
            };
            out.partitions.push(res);
        }
        r.topics.push(out);
    }
    r
}
