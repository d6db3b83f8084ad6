//! Typed helpers over a [`Connection`]: Metadata, InitProducerId and Produce.

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, InitProducerIdRequest, MetadataRequest, ProduceResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{batch::ProducerState, codes, conn::Connection, produce, Error, ResponseFuture};

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
    /// The controller's broker id, if the cluster named one.
    pub controller: Option<i32>,
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
        let mut md = Metadata {
            controller: (resp.controller_id.0 >= 0).then_some(resp.controller_id.0),
            ..Metadata::default()
        };
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

    /// Creates `topic` with one partition, the cluster's default replication factor and
    /// `configs` (CreateTopics version 4 and up take -1 for the broker's default), for
    /// clusters that do not create topics on Metadata. Returns the topic's error code
    /// (0, or TOPIC_ALREADY_EXISTS when another client was first) and message.
    pub async fn create_topic(
        &self,
        topic: &str,
        configs: &[(String, String)],
        timeout_ms: i32,
    ) -> Result<(i16, Option<String>), Error> {
        let version = self.version_within(ApiKey::CreateTopics, 4, i16::MAX)?;
        let configs = (configs.iter())
            .map(|(k, v)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_value(Some(StrBytes::from_string(v.clone())))
            })
            .collect();
        let req = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_num_partitions(1)
                .with_replication_factor(-1)
                .with_configs(configs)])
            .with_timeout_ms(timeout_ms);
        let resp = self.send_versioned(&req, version).await?.wait().await?;
        let t = (resp.topics.into_iter())
            .find(|t| t.name.0.as_str() == topic)
            .ok_or(Error::Broker {
                api: "CreateTopics",
                code: codes::UNKNOWN_SERVER_ERROR,
            })?;
        Ok((t.error_code, t.error_message.map(|m| m.to_string())))
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
    /// can be in flight on this connection. The record batches are written from `parts`
    /// as they are, not copied into the request ([`super::produce`]); the
    /// partitions of one topic go in one topic entry, topics in order of first appearance.
    pub async fn produce(
        &self,
        parts: &[ProducePartition],
        acks: i16,
        timeout_ms: i32,
    ) -> Result<ResponseFuture<ProduceResponse>, Error> {
        let version = self.produce_version()?;
        let mut order: Vec<&str> = Vec::new();
        for p in parts {
            if !order.contains(&p.topic.as_str()) {
                order.push(&p.topic);
            }
        }
        let grouped: Vec<produce::Part<'_>> = order
            .iter()
            .flat_map(|t| parts.iter().filter(move |p| p.topic == *t))
            .map(|p| produce::Part {
                topic: &p.topic,
                partition: p.partition,
                records: &p.records,
            })
            .collect();
        self.send_frame(ApiKey::Produce as i16, version, |f| {
            produce::encode(f, &grouped, acks, timeout_ms, version)
        })
        .await
    }

    /// The Produce version to use: the highest both sides support, at most
    /// [`produce::MAX_VERSION`] (version 13 names topics by id).
    pub fn produce_version(&self) -> Result<i16, Error> {
        self.version_within(ApiKey::Produce, produce::MIN_VERSION, produce::MAX_VERSION)
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

#[cfg(test)]
mod tests {
    use bytes::{Buf, BufMut, BytesMut};
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{
        ApiVersionsResponse, ProduceRequest, RequestHeader, ResponseHeader,
    };
    use kafka_protocol::protocol::{Decodable, Encodable};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    async fn read_frame(s: &mut DuplexStream) -> Bytes {
        let len = s.read_i32().await.unwrap() as usize;
        let mut f = vec![0; len];
        s.read_exact(&mut f).await.unwrap();
        Bytes::from(f)
    }

    /// A broker that advertises Produce `min..=max` and answers ApiVersions, then hands
    /// back the next request frame it reads.
    async fn broker(mut s: DuplexStream, min: i16, max: i16) -> Bytes {
        let mut req = read_frame(&mut s).await;
        let h = RequestHeader::decode(&mut req, 2).unwrap();
        let mut resp = ApiVersionsResponse::default();
        for (key, lo, hi) in [(ApiKey::ApiVersions, 0, 3), (ApiKey::Produce, min, max)] {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = lo;
            v.max_version = hi;
            resp.api_keys.push(v);
        }
        let mut out = BytesMut::new();
        out.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(h.correlation_id)
            .encode(&mut out, 0)
            .unwrap();
        resp.encode(&mut out, h.request_api_version).unwrap();
        let len = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        s.write_all(&out).await.unwrap();
        read_frame(&mut s).await
    }

    #[tokio::test]
    async fn produce_names_topics_even_when_the_broker_offers_topic_ids() {
        for (max, want) in [(13, 12), (12, 12), (7, 7)] {
            let (a, b) = tokio::io::duplex(1 << 20);
            let peer = tokio::spawn(broker(b, 3, max));
            let conn = Connection::handshake(Box::new(a), "t").await.unwrap();
            assert_eq!(conn.produce_version().unwrap(), want);
            let records = Bytes::from(vec![7u8; 10_000]);
            let parts = [
                ProducePartition {
                    topic: "x".into(),
                    partition: 0,
                    records: records.clone(),
                },
                ProducePartition {
                    topic: "y".into(),
                    partition: 0,
                    records: records.clone(),
                },
                ProducePartition {
                    topic: "x".into(),
                    partition: 1,
                    records: records.clone(),
                },
            ];
            let _pending = conn.produce(&parts, -1, 1000).await.unwrap();
            let mut frame = peer.await.unwrap();
            let version = (&frame[2..4]).get_i16();
            let header_version = ApiKey::Produce.request_header_version(version);
            let h = RequestHeader::decode(&mut frame, header_version).unwrap();
            assert_eq!(h.request_api_key, ApiKey::Produce as i16);
            assert_eq!(h.request_api_version, want);
            let req = ProduceRequest::decode(&mut frame, want).unwrap();
            assert!(!frame.has_remaining());
            let names: Vec<(&str, usize)> = req
                .topic_data
                .iter()
                .map(|t| (t.name.0.as_str(), t.partition_data.len()))
                .collect();
            assert_eq!(names, [("x", 2), ("y", 1)], "v{want}");
            assert!(req.topic_data.iter().all(|t| t
                .partition_data
                .iter()
                .all(|p| p.records.as_ref() == Some(&records))));
        }
    }

    #[tokio::test]
    async fn a_broker_that_only_takes_topic_ids_is_refused() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let peer = tokio::spawn(broker(b, 13, 13));
        let conn = Connection::handshake(Box::new(a), "t").await.unwrap();
        assert!(matches!(
            conn.produce_version(),
            Err(Error::Unsupported(ApiKey::Produce))
        ));
        let parts = [ProducePartition {
            topic: "x".into(),
            partition: 0,
            records: Bytes::new(),
        }];
        assert!(conn.produce(&parts, -1, 1000).await.is_err());
        peer.abort();
    }
}
