//! RecordBatch v2 encoding for an idempotent producer (no I/O).

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::record_batch::{self, Codec};
use super::Error;

/// Idempotent producer identity, persisted by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerState {
    /// Producer id from InitProducerId (-1 for a non-idempotent producer).
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
}

impl ProducerState {
    /// A producer without idempotence.
    pub const NONE: ProducerState = ProducerState {
        producer_id: -1,
        producer_epoch: -1,
    };
}

/// One record to encode.
#[derive(Debug, Clone, Default)]
pub struct BatchRecord {
    /// Record key.
    pub key: Option<Bytes>,
    /// Record value.
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// CreateTime in ms since the epoch.
    pub timestamp_ms: i64,
}

/// Encodes `records` as one v2 RecordBatch whose first sequence is `base_sequence`.
///
/// Uncompressed and zstd batches are written by [`record_batch::write`]; other codecs by
/// `kafka-protocol`.
///
/// Each record gets `offset = i` and `sequence = base_sequence + i` (a sequence of -1 on
/// every record would make the encoder cut one batch per record).
pub fn encode_batch(
    records: &[BatchRecord],
    producer: ProducerState,
    base_sequence: i32,
    compression: Compression,
) -> Result<Bytes, Error> {
    let lean = match compression {
        Compression::None => Some(Codec::None),
        Compression::Zstd => Some(Codec::Zstd),
        _ => None,
    };
    if let Some(codec) = lean {
        return record_batch::write(records, producer, base_sequence, codec).map_err(Error::encode);
    }
    let idempotent = producer.producer_id >= 0;
    let encoded: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let i = i32::try_from(i).unwrap_or(i32::MAX);
            let mut headers = IndexMap::with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers.insert(StrBytes::from_string(k.clone()), v.clone());
            }
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: producer.producer_id,
                producer_epoch: producer.producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: i64::from(i),
                sequence: if idempotent {
                    base_sequence.wrapping_add(i)
                } else {
                    i
                },
                timestamp: r.timestamp_ms,
                key: r.key.clone(),
                value: r.value.clone(),
                headers,
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &encoded,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(Error::encode)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn one_batch_with_sequences() {
        let recs: Vec<BatchRecord> = (0..10)
            .map(|i| BatchRecord {
                key: None,
                value: Some(Bytes::from(vec![b'x'; 100])),
                headers: vec![("mqtt.topic".into(), Some(Bytes::from_static(b"a/b")))],
                timestamp_ms: 1_000 + i,
            })
            .collect();
        let p = ProducerState {
            producer_id: 7,
            producer_epoch: 0,
        };
        let mut bytes = encode_batch(&recs, p, 42, Compression::Zstd).unwrap();
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        assert_eq!(set.records.len(), 10);
        assert_eq!(set.records[0].sequence, 42);
        assert_eq!(set.records[9].sequence, 51);
        assert_eq!(set.records[3].timestamp, 1_003);
        assert!(bytes.is_empty(), "exactly one batch");
    }
}

/// Byte offsets in a v2 RecordBatch header.
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const PRODUCER_ID_AT: usize = 43;
const BASE_SEQUENCE_AT: usize = 53;
const HEADER_LEN: usize = 61;

/// Rewrites the producer id, epoch and base sequence of an encoded v2 RecordBatch and
/// recomputes its CRC (which covers everything from the attributes on).
pub fn restamp(batch: &[u8], producer: ProducerState, base_sequence: i32) -> Result<Bytes, Error> {
    if batch.len() < HEADER_LEN || batch[16] != 2 {
        return Err(Error::Encode("not a v2 record batch".into()));
    }
    let mut b = batch.to_vec();
    b[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer.producer_id.to_be_bytes());
    b[PRODUCER_ID_AT + 8..PRODUCER_ID_AT + 10]
        .copy_from_slice(&producer.producer_epoch.to_be_bytes());
    b[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(Bytes::from(b))
}

#[cfg(test)]
mod restamp_tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn zstd_batches_decode_and_shrink() {
        let recs: Vec<BatchRecord> = (0..200)
            .map(|i| BatchRecord {
                value: Some(Bytes::from(format!("sensor reading {i:08} ").repeat(20))),
                headers: vec![("edge.seq".into(), Some(Bytes::from(i.to_string())))],
                timestamp_ms: i,
                ..BatchRecord::default()
            })
            .collect();
        let p = ProducerState {
            producer_id: 3,
            producer_epoch: 1,
        };
        let plain = encode_batch(&recs, p, 5, Compression::None).unwrap();
        let mut z = encode_batch(&recs, p, 5, Compression::Zstd).unwrap();
        assert!(z.len() * 4 < plain.len(), "{} vs {}", z.len(), plain.len());
        assert_eq!(z[22] & 7, 4, "codec bits say zstd");
        let set = RecordBatchDecoder::decode(&mut z).unwrap();
        assert_eq!(set.records.len(), 200);
        assert_eq!(set.records[199].sequence, 204);
        assert_eq!(set.records[7].value, recs[7].value);
        assert_eq!(
            set.records[7].headers[&b"edge.seq"[..]],
            Some(Bytes::from("7"))
        );
    }

    #[test]
    fn restamped_batch_decodes_with_new_identity() {
        let recs = vec![
            BatchRecord {
                value: Some(Bytes::from_static(b"v")),
                ..BatchRecord::default()
            };
            3
        ];
        let p = ProducerState {
            producer_id: 1,
            producer_epoch: 0,
        };
        let b = encode_batch(&recs, p, 10, Compression::Zstd).unwrap();
        let q = ProducerState {
            producer_id: 99,
            producer_epoch: 2,
        };
        let mut r = restamp(&b, q, 0).unwrap();
        let set = RecordBatchDecoder::decode(&mut r).unwrap();
        assert_eq!(set.records[0].producer_id, 99);
        assert_eq!(set.records[0].producer_epoch, 2);
        assert_eq!(set.records[2].sequence, 2);
    }
}
