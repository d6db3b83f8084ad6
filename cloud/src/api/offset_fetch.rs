//! OffsetFetch: committed offsets of one group (v0-7) or several (v8), -1 where none.

use std::collections::HashMap;

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use crate::acl::{Grants, Op};
use crate::broker::Broker;
use crate::groups::Committed;

/// (topic, [(partition, committed)]) for the requested topics, or all committed ones
/// the client may read. A requested topic it may not read has no committed offsets
/// here; [`code`] answers it TOPIC_AUTHORIZATION_FAILED.
type Answer = Vec<(String, Vec<(i32, Option<Committed>)>)>;

/// A requested topic's partition error code.
fn code(grants: &Grants, topic: &str) -> i16 {
    if grants.may_kafka(Op::Read, topic) {
        errors::NONE
    } else {
        errors::TOPIC_AUTHORIZATION_FAILED
    }
}

fn lookup(
    broker: &Broker,
    grants: &Grants,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Answer, i16> {
    let committed: HashMap<(String, i32), Committed> = broker
        .groups
        .offsets(group)
        .map_err(|_| errors::KAFKA_STORAGE_ERROR)?;
    Ok(match topics {
        Some(ts) => ts
            .into_iter()
            .map(|(t, parts)| {
                let readable = grants.may_kafka(Op::Read, &t);
                let ps = parts
                    .into_iter()
                    .map(|p| {
                        (
                            p,
                            committed.get(&(t.clone(), p)).filter(|_| readable).cloned(),
                        )
                    })
                    .collect();
                (t, ps)
            })
            .collect(),
        None => {
            let mut by_topic: HashMap<String, Vec<(i32, Option<Committed>)>> = HashMap::new();
            for ((t, p), c) in committed {
                if !grants.may_kafka(Op::Read, &t) {
                    continue;
                }
                by_topic.entry(t).or_default().push((p, Some(c)));
            }
            let mut v: Answer = by_topic.into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, ps) in v.iter_mut() {
                ps.sort_by_key(|(p, _)| *p);
            }
            v
        }
    })
}

pub(super) fn handle(
    broker: &Broker,
    grants: &Grants,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut r = OffsetFetchResponse::default();
    if version >= 8 {
        for g in req.groups {
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let mut out = OffsetFetchResponseGroup::default();
            let answer = match grants.may_group(g.group_id.0.as_str()) {
                true => lookup(broker, grants, g.group_id.0.as_str(), topics),
                false => Err(errors::GROUP_AUTHORIZATION_FAILED),
            };
            match answer {
                Ok(answer) => {
                    for (t, ps) in answer {
                        let mut rt = OffsetFetchResponseTopics::default();
                        let error = code(grants, &t);
                        rt.name = TopicName(StrBytes::from_string(t));
                        for (p, c) in ps {
                            let mut rp = OffsetFetchResponsePartitions::default();
                            rp.partition_index = p;
                            rp.error_code = error;
                            rp.committed_offset = c.as_ref().map(|c| c.offset).unwrap_or(-1);
                            rp.committed_leader_epoch =
                                c.as_ref().map(|c| c.leader_epoch).unwrap_or(-1);
                            rp.metadata = Some(StrBytes::from_string(
                                c.map(|c| c.metadata).unwrap_or_default(),
                            ));
                            rt.partitions.push(rp);
                        }
                        out.topics.push(rt);
                    }
                }
                Err(code) => out.error_code = code,
            }
            out.group_id = GroupId(g.group_id.0);
            r.groups.push(out);
        }
        return r;
    }
    let topics = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let answer = match grants.may_group(req.group_id.0.as_str()) {
        true => lookup(broker, grants, req.group_id.0.as_str(), topics),
        false => Err(errors::GROUP_AUTHORIZATION_FAILED),
    };
    match answer {
        Ok(answer) => {
            for (t, ps) in answer {
                let mut rt = OffsetFetchResponseTopic::default();
                let error = code(grants, &t);
                rt.name = TopicName(StrBytes::from_string(t));
                for (p, c) in ps {
                    let mut rp = OffsetFetchResponsePartition::default();
                    rp.partition_index = p;
                    rp.error_code = error;
                    rp.committed_offset = c.as_ref().map(|c| c.offset).unwrap_or(-1);
                    rp.committed_leader_epoch = c.as_ref().map(|c| c.leader_epoch).unwrap_or(-1);
                    rp.metadata = Some(StrBytes::from_string(
                        c.map(|c| c.metadata).unwrap_or_default(),
                    ));
                    rt.partitions.push(rp);
                }
                r.topics.push(rt);
            }
        }
        Err(code) => r.error_code = code,
    }
    r
}
