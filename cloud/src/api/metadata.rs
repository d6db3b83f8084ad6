//! Metadata: brokers and topics. All-topics answers are encoded once per topic-set
//! generation and version, and built by one request at a time, so a million topics cost
//! one build, not one per client.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, MetadataRequest, MetadataResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use tracing::warn;

use super::{errors, Reply};
use crate::acl::{Grants, Op};
use crate::broker::{Broker, NODE_ID};
use crate::log::{NewTopic, Topic};

pub(super) fn topic_entry(t: &Topic) -> MetadataResponseTopic {
    let mut e = MetadataResponseTopic::default();
    e.name = Some(TopicName(StrBytes::from_string(t.name.to_string())));
    e.topic_id = uuid::Uuid::from_bytes(t.uuid());
    e.partitions = (0..t.partition_count() as i32)
        .map(|i| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = i;
            p.leader_id = BrokerId(NODE_ID);
            p.leader_epoch = 0;
            p.replica_nodes = vec![BrokerId(NODE_ID)];
            p.isr_nodes = vec![BrokerId(NODE_ID)];
            p
        })
        .collect();
    e
}

fn missing(name: TopicName, code: i16) -> MetadataResponseTopic {
    let mut e = MetadataResponseTopic::default();
    e.name = Some(name);
    e.error_code = code;
    e
}

fn base(broker: &Broker) -> MetadataResponse {
    let mut r = MetadataResponse::default();
    let mut b = MetadataResponseBroker::default();
    b.node_id = BrokerId(NODE_ID);
    b.host = StrBytes::from_string(broker.node.host.clone());
    b.port = broker.node.port;
    r.brokers = vec![b];
    r.cluster_id = Some(StrBytes::from_string(broker.cluster_id.clone()));
    r.controller_id = BrokerId(NODE_ID);
    r
}

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: MetadataRequest,
    version: i16,
) -> Reply {
    let Some(requested) = req.topics else {
        return all_topics(broker, grants, version).await;
    };
    // v0 has no null: an empty list means all topics.
    if requested.is_empty() && version == 0 {
        return all_topics(broker, grants, version).await;
    }
    let auto =
        broker.config.kafka.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let mut r = base(broker);
    let mut to_create = Vec::new();
    for t in &requested {
        let Some(name) = t.name.clone() else {
            r.topics.push(missing(
                TopicName(StrBytes::default()),
                errors::UNKNOWN_TOPIC_ID,
            ));
            continue;
        };
        // Auto-creation needs the right to write the topic (Kafka: Create).
        if auto
            && grants.may_kafka(Op::Write, name.0.as_str())
            && broker.log.get(name.0.as_str()).is_none()
        {
            to_create.push(NewTopic {
                name: name.0.to_string(),
                partitions: broker.config.kafka.default_partitions,
                configs: Default::default(),
            });
        }
    }
    if !to_create.is_empty() {
        for res in broker.log.create(to_create, false).await {
            if let Err(e) = res {
                if !matches!(
                    e,
                    crate::log::TopicError::Exists | crate::log::TopicError::InvalidName(_)
                ) {
                    warn!(cause = %e, "auto-create failed");
                }
            }
        }
    }
    for t in requested {
        let Some(name) = t.name else { continue };
        // Kafka answers a topic the client may not see the same whether it exists or not.
        if !grants.sees_kafka(name.0.as_str()) {
            r.topics
                .push(missing(name, errors::TOPIC_AUTHORIZATION_FAILED));
            continue;
        }
        match broker.log.get(name.0.as_str()) {
            Some(topic) => r.topics.push(topic_entry(&topic)),
            None => {
                let code = if crate::log::validate_name(name.0.as_str()).is_err() {
                    errors::INVALID_TOPIC_EXCEPTION
                } else {
                    errors::UNKNOWN_TOPIC_OR_PARTITION
                };
                r.topics.push(missing(name, code));
            }
        }
    }
    Reply::message(ResponseKind::Metadata(r))
}

async fn all_topics(broker: &Broker, grants: &Grants, version: i16) -> Reply {
    if grants.restricted() {
        return visible_topics(broker, grants);
    }
    let generation = broker.log.generation();
    if let Some(b) = cached(broker, generation, version) {
        return Reply::Encoded(b);
    }
    let _building = broker.metadata_build.lock().await;
    if let Some(b) = cached(broker, generation, version) {
        return Reply::Encoded(b);
    }
    let topics: Vec<Arc<Topic>> = broker.log.all();
    let cap = broker.config.kafka.metadata_max_topics;
    if topics.len() > cap {
        warn!(
            topics = topics.len(),
            cap, "all-topics metadata truncated to kafka.metadata_max_topics"
        );
    }
    let shown = &topics[..topics.len().min(cap)];
    // Size first, so the cached body is allocated once at its exact size (no doubling
    // reallocations of a buffer that is tens of megabytes at a million topics).
    let mut size = 0usize;
    for t in shown {
        size += topic_entry(t).compute_size(version).unwrap_or(0);
    }
    let buf = match encode_streaming(
        &base(broker),
        shown.len(),
        size,
        shown.iter().map(|t| topic_entry(t)),
        version,
    ) {
        Ok(b) => b,
        Err(e) => {
            warn!(cause = %e, "metadata encode failed");
            return Reply::message(ResponseKind::Metadata(base(broker)));
        }
    };
    let bytes = buf.freeze();
    *broker
        .metadata_cache
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some((generation, version, bytes.clone()));
    Reply::Encoded(bytes)
}

/// All topics a client under `acl` may see (Kafka leaves the others out): built per
/// request, not cached, as the set differs per user.
fn visible_topics(broker: &Broker, grants: &Grants) -> Reply {
    let mut r = base(broker);
    r.topics = broker
        .log
        .all()
        .iter()
        .filter(|t| grants.sees_kafka(&t.name))
        .take(broker.config.kafka.metadata_max_topics)
        .map(|t| topic_entry(t))
        .collect();
    Reply::message(ResponseKind::Metadata(r))
}

/// Encodes a Metadata response topic by topic, never holding more than one topic's
/// response struct: the encoding of a response with no topics is split around its
/// (empty) topics array, and the array is written in between.
fn encode_streaming(
    base: &MetadataResponse,
    count: usize,
    topics_size: usize,
    topics: impl Iterator<Item = MetadataResponseTopic>,
    version: i16,
) -> anyhow::Result<BytesMut> {
    let mut empty = BytesMut::new();
    base.encode(&mut empty, version)?;
    let flexible = version >= 9;
    // Fields after the topics array: cluster_authorized_operations (v8-10), tagged fields (v9+).
    let suffix = if (8..=10).contains(&version) { 4 } else { 0 } + if flexible { 1 } else { 0 };
    let empty_array = if flexible { 1 } else { 4 };
    anyhow::ensure!(
        empty.len() >= suffix + empty_array,
        "unexpected empty metadata encoding"
    );
    let prefix_end = empty.len() - suffix - empty_array;
    let mut out = BytesMut::with_capacity(empty.len() + 5 + topics_size);
    out.extend_from_slice(&empty[..prefix_end]);
    if flexible {
        let mut n = count as u64 + 1;
        while n >= 0x80 {
            out.put_u8((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.put_u8(n as u8);
    } else {
        out.put_i32(count as i32);
    }
    for t in topics {
        t.encode(&mut out, version)?;
    }
    out.extend_from_slice(&empty[empty.len() - suffix..]);
    Ok(out)
}

fn cached(broker: &Broker, generation: u64, version: i16) -> Option<Bytes> {
    match &*broker
        .metadata_cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    {
        Some((g, v, b)) if *g == generation && *v == version => Some(b.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, partitions: i32) -> MetadataResponseTopic {
        let mut e = MetadataResponseTopic::default();
        e.name = Some(TopicName(StrBytes::from_string(name.to_string())));
        e.topic_id = uuid::Uuid::from_bytes([7; 16]);
        e.partitions = (0..partitions)
            .map(|i| {
                let mut p = MetadataResponsePartition::default();
                p.partition_index = i;
                p.replica_nodes = vec![BrokerId(0)];
                p.isr_nodes = vec![BrokerId(0)];
                p
            })
            .collect();
        e
    }

    #[test]
    fn streaming_encoding_equals_whole_encoding_for_every_version() {
        let mut base = MetadataResponse::default();
        let mut b = MetadataResponseBroker::default();
        b.host = StrBytes::from_static_str("127.0.0.1");
        b.port = 9092;
        base.brokers = vec![b];
        base.cluster_id = Some(StrBytes::from_static_str("c"));
        for n in [0usize, 1, 3, 130] {
            let topics: Vec<MetadataResponseTopic> = (0..n)
                .map(|i| topic(&format!("t{i}"), (i % 3) as i32 + 1))
                .collect();
            let mut whole = base.clone();
            whole.topics = topics.clone();
            for version in 0..=12 {
                let mut expected = BytesMut::new();
                whole.encode(&mut expected, version).expect("encode");
                let got = encode_streaming(&base, n, 0, topics.clone().into_iter(), version)
                    .expect("stream");
                assert_eq!(got, expected, "version {version}, {n} topics");
            }
        }
    }
}
