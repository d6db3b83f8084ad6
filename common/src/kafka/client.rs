//! Typed helpers over a [`Connection`]: Metadata, InitProducerId and Produce.

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, InitProducerIdRequest, MetadataRequest, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{batch::ProducerState, conn::Connection, Error, ResponseFuture};

/// One partition as Metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMeta {
    /// Partition index.
    pub partition: i32,
    /// Leader broker id (-1 if none).
    pub leader: i32,
    /// Partition error code.
    pub error_code: i16,
}

/// The parts of a Metadata response the producer needs.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// Broker id -> `host:port`.
    pub brokers: HashMap<i32, String>,
    /// Topic -> (topic error code, partitions).
    pub topics: HashMap<String, (i16, Vec<PartitionMeta>)>,
}

impl Metadata {
    /// Address of the leader of `topic`/`partition`, if known.
    pub fn leader_addr(&self, topic: &str, partition: i32) -> Option<&str> {
        let (_, parts) = self.topics.get(topic)?;
        let p = parts.iter().find(|p| p.partition == partition)?;
        self.brokers.get(&p.leader).map(String::as_str)
    }
}

/// One partition's data in a Produce request.
#[derive(Debug, Clone)]
pub struct ProducePartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// An encoded RecordBatch.
    pub records: Bytes,
}

impl Connection {
    /// Metadata for `topics`, creating them if the broker auto-creates.
    pub async fn metadata(&self, topics: &[String], auto_create: bool) -> Result<Metadata, Error> {
        let req = MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect(),
            ))
            .with_allow_auto_topic_creation(auto_create);
        let resp = self.send(&req).await?.wait().await?;
        let mut md = Metadata::default();
        for b in resp.brokers {
            md.brokers
                .insert(b.node_id.0, format!("{}:{}", b.host.as_str(), b.port));
        }
        for t in resp.topics {
            let Some(name) = t.name else { continue };
            let parts = t
                .partitions
                .iter()
                .map(|p| PartitionMeta {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    error_code: p.error_code,
                })
                .collect();
            md.topics.insert(name.0.to_string(), (t.error_code, parts));
        }
        Ok(md)
    }

    /// Obtains a fresh idempotent producer id and epoch.
    pub async fn init_producer_id(&self) -> Result<ProducerState, Error> {
        let req = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id((-1).into())
            .with_producer_epoch(-1);
        let resp = self.send(&req).await?.wait().await?;
        if resp.error_code != 0 {
            return Err(Error::Broker {
                api: "InitProducerId",
                code: resp.error_code,
            });
        }
        Ok(ProducerState {
            producer_id: resp.producer_id.0,
            producer_epoch: resp.producer_epoch,
        })
    }

    /// Sends one Produce request (acks = all) without waiting for the answer, so several
    /// can be in flight on this connection.
    pub async fn produce(
        &self,
        parts: &[ProducePartition],
        acks: i16,
        timeout_ms: i32,
    ) -> Result<ResponseFuture<ProduceResponse>, Error> {
        let mut by_topic: Vec<TopicProduceData> = Vec::new();
        for p in parts {
            let data = PartitionProduceData::default()
                .with_index(p.partition)
                .with_records(Some(p.records.clone()));
            match by_topic.iter_mut().find(|t| t.name.0.as_str() == p.topic) {
                Some(t) => t.partition_data.push(data),
                None => by_topic.push(
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(p.topic.clone())))
                        .with_partition_data(vec![data]),
                ),
            }
        }
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(by_topic);
        self.send(&req).await
    }
}

/// Error code per (topic, partition) from a Produce response.
pub fn produce_errors(resp: &ProduceResponse) -> Vec<(String, i32, i16)> {
    let mut out = Vec::new();
    for t in &resp.responses {
        for p in &t.partition_responses {
            out.push((t.name.0.to_string(), p.index, p.error_code));
        }
    }
    out
}

/// The broker id type, re-exported for callers that route by leader.
pub type NodeId = BrokerId;
