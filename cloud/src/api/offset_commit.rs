//! OffsetCommit: durable committed offsets, including simple (memberless) commits with
//! generation -1 as Flink and other assign()-based consumers send them.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use tracing::error;

use super::errors;
use crate::acl::{Grants, Op};
use crate::broker::Broker;
use crate::groups::Committed;

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: OffsetCommitRequest,
    _version: i16,
) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let mut offsets = Vec::new();
    let mut unknown = std::collections::HashSet::new();
    let mut refused = std::collections::HashSet::new();
    for t in &req.topics {
        if !grants.may_kafka(Op::Read, t.name.0.as_str()) {
            refused.insert(t.name.0.to_string());
            continue;
        }
        let topic = broker.log.get(t.name.0.as_str());
        for p in &t.partitions {
            let known = topic.as_ref().is_some_and(|tp| {
                p.partition_index >= 0 && (p.partition_index as u32) < tp.partition_count()
            });
            if !known {
                unknown.insert((t.name.0.to_string(), p.partition_index));
                continue;
            }
            offsets.push((
                t.name.0.to_string(),
                p.partition_index,
                Committed {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                },
            ));
        }
    }
    let code = if group.is_empty() {
        crate::groups::INVALID_GROUP_ID
    } else if !grants.may_group(&group) {
        errors::GROUP_AUTHORIZATION_FAILED
    } else {
        match broker
            .groups
            .commit(
                &group,
                req.member_id.as_str(),
                req.generation_id_or_member_epoch,
                offsets,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                error!(cause = %e, group = %group, "offset commit failed");
                errors::KAFKA_STORAGE_ERROR
            }
        }
    };
    let mut r = OffsetCommitResponse::default();
    for t in req.topics {
        let mut rt = OffsetCommitResponseTopic::default();
        for p in &t.partitions {
            let mut rp = OffsetCommitResponsePartition::default();
            rp.partition_index = p.partition_index;
            rp.error_code = if refused.contains(t.name.0.as_str()) {
                errors::TOPIC_AUTHORIZATION_FAILED
            } else if unknown.contains(&(t.name.0.to_string(), p.partition_index)) {
                errors::UNKNOWN_TOPIC_OR_PARTITION
            } else {
                code
            };
            rt.partitions.push(rp);
        }
        rt.name = t.name;
        r.topics.push(rt);
    }
    r
}
