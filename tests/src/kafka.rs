//! A minimal Kafka client for benchmarks: one connection, one request at a time.

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Client {
    stream: TcpStream,
    correlation: i32,
}

impl Client {
    pub async fn connect(addr: &str) -> Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            correlation: 0,
        })
    }

    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        req: &Req,
        expect_reply: bool,
    ) -> Result<Option<Resp>> {
        self.correlation += 1;
        let mut h = RequestHeader::default();
        h.request_api_key = api as i16;
        h.request_api_version = version;
        h.correlation_id = self.correlation;
        h.client_id = Some(StrBytes::from_static_str("bench"));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        h.encode(&mut buf, api.request_header_version(version))?;
        req.encode(&mut buf, version)?;
        let len = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).await?;
        if !expect_reply {
            return Ok(None);
        }
        let len = self.stream.read_i32().await? as usize;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await?;
        let mut body = Bytes::from(body);
        let rh = ResponseHeader::decode(&mut body, api.response_header_version(version))?;
        if rh.correlation_id != self.correlation {
            bail!(
                "correlation id {} != {}",
                rh.correlation_id,
                self.correlation
            );
        }
        Ok(Some(Resp::decode(&mut body, version)?))
    }

    pub async fn create_topics(&mut self, names: &[String], partitions: i32) -> Result<Vec<i16>> {
        let mut req = CreateTopicsRequest::default();
        req.timeout_ms = 60_000;
        for n in names {
            let mut t = CreatableTopic::default();
            t.name = TopicName(StrBytes::from_string(n.clone()));
            t.num_partitions = partitions;
            t.replication_factor = 1;
            req.topics.push(t);
        }
        let r: CreateTopicsResponse = self
            .call(ApiKey::CreateTopics, 7, &req, true)
            .await?
            .context("no reply")?;
        Ok(r.topics.iter().map(|t| t.error_code).collect())
    }

    pub async fn metadata(&mut self, topic: Option<&str>) -> Result<MetadataResponse> {
        let mut req = MetadataRequest::default();
        req.allow_auto_topic_creation = false;
        req.topics = topic.map(|t| {
            let mut m = MetadataRequestTopic::default();
            m.name = Some(TopicName(StrBytes::from_string(t.to_string())));
            vec![m]
        });
        self.call(ApiKey::Metadata, 12, &req, true)
            .await?
            .context("no reply")
    }

    /// Produces one record set; returns the base offset.
    pub async fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: Bytes,
        acks: i16,
    ) -> Result<i64> {
        let mut p = PartitionProduceData::default();
        p.index = partition;
        p.records = Some(records);
        let mut t = TopicProduceData::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partition_data = vec![p];
        let mut req = ProduceRequest::default();
        req.acks = acks;
        req.timeout_ms = 30_000;
        req.topic_data = vec![t];
        let r: Option<ProduceResponse> = self.call(ApiKey::Produce, 9, &req, acks != 0).await?;
        let Some(r) = r else { return Ok(-1) };
        let pr = r
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .context("empty produce response")?;
        if pr.error_code != 0 {
            bail!("produce error {}", pr.error_code);
        }
        Ok(pr.base_offset)
    }

    /// Fetches from `offset`; returns (record bytes, high watermark).
    pub async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<(Bytes, i64)> {
        let mut p = FetchPartition::default();
        p.partition = partition;
        p.fetch_offset = offset;
        p.partition_max_bytes = max_bytes;
        p.current_leader_epoch = -1;
        p.log_start_offset = -1;
        let mut t = FetchTopic::default();
        t.topic = TopicName(StrBytes::from_string(topic.to_string()));
        t.partitions = vec![p];
        let mut req = FetchRequest::default();
        req.replica_id = kafka_protocol::messages::BrokerId(-1);
        req.max_wait_ms = max_wait_ms;
        req.min_bytes = 1;
        req.max_bytes = max_bytes;
        req.session_epoch = -1;
        req.topics = vec![t];
        let r: FetchResponse = self
            .call(ApiKey::Fetch, 11, &req, true)
            .await?
            .context("no reply")?;
        let pd = r
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .context("empty fetch response")?;
        if pd.error_code != 0 {
            bail!("fetch error {}", pd.error_code);
        }
        Ok((pd.records.clone().unwrap_or_default(), pd.high_watermark))
    }
}

/// Encodes `n` records of `size` bytes as one batch.
pub fn record_batch(n: usize, size: usize, compression: Compression) -> Result<Bytes> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: now,
            key: None,
            value: Some(Bytes::from(
                (0..size).map(|j| (i * 31 + j) as u8).collect::<Vec<u8>>(),
            )),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )?;
    Ok(buf.freeze())
}

/// Counts the records in a fetched record set (sum of batch record counts).
pub fn count_records(mut b: Bytes) -> usize {
    let mut n = 0;
    while b.remaining() >= 61 {
        let len = i32::from_be_bytes([b[8], b[9], b[10], b[11]]) as usize;
        if b.remaining() < 12 + len {
            break;
        }
        n += i32::from_be_bytes([b[57], b[58], b[59], b[60]]) as usize;
        b.advance(12 + len);
    }
    n
}
