//! Kafka RecordBatch (magic 2) headers: parse, validate, and rewrite the base offset.
//!
//! Layout of the 61-byte header (all big-endian):
//! `baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 | crc u32 |
//!  attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//!  producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32`.
//! The CRC-32C covers `attributes..end`, so rewriting the base offset (bytes 0..8) and the
//! leader epoch keeps a stored batch valid: Fetch returns stored bytes, never re-encoded.

use bytes::{Bytes, BytesMut};
use common::kafka::record_batch::{self, RecordView};
use kafka_protocol::records::RecordBatchDecoder;

pub(crate) const HEADER_LEN: usize = 61;
const LENGTH_OFFSET: usize = 8;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BatchError {
    #[error("record set truncated: {0}")]
    Truncated(&'static str),
    #[error("unsupported record batch magic {0} (only v2 batches are accepted)")]
    Magic(i8),
    #[error("record batch crc mismatch")]
    Crc,
    #[error("record batch has invalid field: {0}")]
    Invalid(&'static str),
}

/// The fields of a batch header the broker acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub(crate) base_offset: i64,
    pub(crate) attributes: i16,
    pub(crate) last_offset_delta: i32,
    pub(crate) base_timestamp: i64,
    pub(crate) max_timestamp: i64,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) base_sequence: i32,
    pub(crate) record_count: i32,
}

impl BatchHeader {
    /// Parses the header of one batch; `b` must be exactly the batch.
    pub(crate) fn parse(b: &[u8]) -> Result<BatchHeader, BatchError> {
        if b.len() < HEADER_LEN {
            return Err(BatchError::Truncated("batch shorter than its header"));
        }
        let i16_at = |o: usize| i16::from_be_bytes([b[o], b[o + 1]]);
        let i32_at = |o: usize| i32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let i64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            i64::from_be_bytes(a)
        };
        let magic = b[MAGIC_OFFSET] as i8;
        if magic != 2 {
            return Err(BatchError::Magic(magic));
        }
        let h = BatchHeader {
            base_offset: i64_at(0),
            attributes: i16_at(ATTRIBUTES_OFFSET),
            last_offset_delta: i32_at(23),
            base_timestamp: i64_at(27),
            max_timestamp: i64_at(35),
            producer_id: i64_at(43),
            producer_epoch: i16_at(51),
            base_sequence: i32_at(53),
            record_count: i32_at(57),
        };
        if h.last_offset_delta < 0 || h.record_count < 0 {
            return Err(BatchError::Invalid("negative record count"));
        }
        Ok(h)
    }

    /// Offsets the batch occupies: `last_offset_delta + 1`.
    pub(crate) fn offset_count(&self) -> u64 {
        self.last_offset_delta as u64 + 1
    }

    pub(crate) fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub(crate) fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// Every record of one stored batch, whatever its codec: the lean reader
/// (`common::kafka::record_batch`) for none and zstd, kafka-protocol for gzip, snappy and
/// lz4. Control records (transaction markers) are left out.
pub(crate) fn records(batch: &Bytes) -> Result<Vec<RecordView>, String> {
    match record_batch::read(batch) {
        Ok(r) if r.control => Ok(Vec::new()),
        Ok(r) => r.collect::<Result<_, _>>().map_err(|e| e.to_string()),
        Err(record_batch::Error::Unsupported(_)) => {
            let mut buf = batch.clone();
            let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| e.to_string())?;
            Ok(set
                .records
                .into_iter()
                .filter(|r| !r.control)
                .map(|r| RecordView {
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key,
                    value: r.value,
                    headers: r
                        .headers
                        .into_iter()
                        .map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), v))
                        .collect(),
                })
                .collect())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The offset after the stored batch `b` at `base` (`base + 1` if its header is bad).
pub(crate) fn end_of(base: u64, b: &[u8]) -> u64 {
    base + BatchHeader::parse(b).map_or(1, |h| h.offset_count())
}

/// Verifies the CRC-32C of one whole batch.
pub(crate) fn verify_crc(b: &[u8]) -> Result<(), BatchError> {
    if b.len() < HEADER_LEN {
        return Err(BatchError::Truncated("batch shorter than its header"));
    }
    let stored = u32::from_be_bytes([
        b[CRC_OFFSET],
        b[CRC_OFFSET + 1],
        b[CRC_OFFSET + 2],
        b[CRC_OFFSET + 3],
    ]);
    if crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]) != stored {
        return Err(BatchError::Crc);
    }
    Ok(())
}

/// Splits a produced record set into its batches, checking each length and CRC.
pub(crate) fn split(records: &Bytes) -> Result<Vec<Bytes>, BatchError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < records.len() {
        let rest = &records[at..];
        if rest.len() < LENGTH_OFFSET + 4 {
            return Err(BatchError::Truncated("batch length missing"));
        }
        let len = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if len < (HEADER_LEN - 12) as i32 {
            return Err(BatchError::Invalid("batch length below header size"));
        }
        let total = 12 + len as usize;
        if rest.len() < total {
            return Err(BatchError::Truncated("batch longer than record set"));
        }
        let batch = records.slice(at..at + total);
        BatchHeader::parse(&batch)?;
        verify_crc(&batch)?;
        out.push(batch);
        at += total;
    }
    Ok(out)
}

/// Returns a copy of `batch` with its base offset set to `base` and leader epoch 0.
pub(crate) fn with_base_offset(batch: &[u8], base: u64) -> Bytes {
    let mut b = BytesMut::from(batch);
    b[0..8].copy_from_slice(&base.to_be_bytes());
    b[12..16].copy_from_slice(&0i32.to_be_bytes());
    b.freeze()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };
    use proptest::prelude::*;

    pub(crate) fn encode(n: usize, compression: Compression, pid: i64, seq: i32) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: pid,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: seq + i as i32,
                timestamp: 1_000 + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'v'; i + 1])),
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
        )
        .expect("encode");
        buf.freeze()
    }

    #[test]
    fn corrupt_crc_is_rejected() {
        let b = encode(3, Compression::None, -1, -1);
        let mut bad = BytesMut::from(&b[..]);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(split(&bad.freeze()), Err(BatchError::Crc));
    }

    #[test]
    fn truncated_set_is_rejected() {
        let b = encode(3, Compression::None, -1, -1);
        assert!(matches!(
            split(&b.slice(..b.len() - 1)),
            Err(BatchError::Truncated(_))
        ));
    }

    proptest! {
        #[test]
        fn rewrite_base_offset_keeps_crc_and_records(n in 1usize..20, base in 0u64..(1u64 << 62),
                                                     codec in 0usize..5, pid in -1i64..5) {
            let compression = [Compression::None, Compression::Gzip, Compression::Snappy,
                               Compression::Lz4, Compression::Zstd][codec];
            let b = encode(n, compression, pid, 0);
            let batches = split(&b).expect("split");
            prop_assert_eq!(batches.len(), 1);
            let h = BatchHeader::parse(&batches[0]).expect("parse");
            prop_assert_eq!(h.offset_count(), n as u64);
            prop_assert_eq!(h.producer_id, pid);
            let moved = with_base_offset(&batches[0], base);
            prop_assert!(verify_crc(&moved).is_ok());
            let mut m = moved.clone();
            let set = RecordBatchDecoder::decode(&mut m).expect("decode");
            prop_assert_eq!(set.records.len(), n);
            for (i, r) in set.records.iter().enumerate() {
                prop_assert_eq!(r.offset, base as i64 + i as i64);
                prop_assert_eq!(r.value.as_ref().map(|v| v.len()), Some(i + 1));
            }
        }

        #[test]
        fn split_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = split(&Bytes::from(data));
        }
    }
}

#[cfg(test)]
mod edge_interop {
    use super::*;
    use common::kafka::batch::{encode_batch, BatchRecord, ProducerState};
    use kafka_protocol::records::Compression;

    /// The edge's encoder (shared in `common`) must produce batches this broker accepts.
    #[test]
    fn edge_batches_pass_validation() {
        let records: Vec<BatchRecord> = (0..50)
            .map(|i| BatchRecord {
                key: Some(Bytes::from(format!("cam{i}"))),
                value: Some(Bytes::from(vec![b'x'; 100 + i])),
                headers: vec![
                    ("mqtt.topic".into(), Some(Bytes::from_static(b"a/b"))),
                    ("mqtt.qos".into(), Some(Bytes::from_static(b"1"))),
                ],
                timestamp_ms: 1_700_000_000_000 + i as i64,
            })
            .collect();
        for c in [Compression::None, Compression::Zstd, Compression::Lz4] {
            let b = encode_batch(
                &records,
                ProducerState {
                    producer_id: 7,
                    producer_epoch: 0,
                },
                100,
                c,
            )
            .expect("encode");
            let batches = split(&b).expect("split");
            assert_eq!(batches.len(), 1, "{c:?}");
            let h = BatchHeader::parse(&batches[0]).expect("header");
            assert_eq!(
                (h.producer_id, h.base_sequence, h.offset_count()),
                (7, 100, 50)
            );
        }
    }
}
