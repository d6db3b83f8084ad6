//! The Produce request body, encoded for a gather write (bytes only, no I/O).
//!
//! A Produce request is almost all record batches the caller has already encoded and
//! compressed. `kafka-protocol`'s encoder copies each into the request's buffer, so a
//! connection held a buffer as large as its largest request (about 1.7 MB during a
//! drain: the largest single allocation of the edge's replicator) and every uplinked
//! byte was copied once more. Here the small fields go into a buffer and each large batch
//! is recorded as a [`Frame`] splice: the connection writes the buffer's pieces and the
//! batches in order with vectored writes, and the bytes on the wire are exactly what
//! `kafka-protocol` would have sent (tested against it for every version).
//!
//! Versions 3-12, which name topics; version 13 (KIP-516) names them by topic id, which
//! this client does not track, so [`MAX_VERSION`] caps the negotiation.

use bytes::{BufMut, Bytes, BytesMut};

use super::Error;

/// Highest Produce version this encoder speaks.
pub const MAX_VERSION: i16 = 12;
/// Lowest Produce version this encoder speaks (`kafka-protocol` 0.18's floor).
pub const MIN_VERSION: i16 = 3;
/// Record batches shorter than this are copied into the buffer rather than spliced: a
/// splice costs two I/O slices, which is more than copying a few kilobytes.
pub const SPLICE_MIN: usize = 4096;

/// One topic-partition's record batches.
pub struct Part<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition index.
    pub partition: i32,
    /// Encoded RecordBatch(es).
    pub records: &'a Bytes,
}

/// A frame under construction: `buf` with `splices` inserted, each `(offset, bytes)`
/// meaning `bytes` follows `buf[..offset]` (offsets ascending).
#[derive(Default)]
pub struct Frame {
    /// The frame's own bytes (length prefix, header and small fields).
    pub buf: BytesMut,
    /// Large byte strings spliced into `buf`, in order.
    pub splices: Vec<(usize, Bytes)>,
}

impl Frame {
    /// Total length of the frame as written.
    pub fn len(&self) -> usize {
        self.buf.len() + self.splices.iter().map(|(_, b)| b.len()).sum::<usize>()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's pieces in write order (empty pieces left out).
    pub fn pieces(&self) -> Vec<&[u8]> {
        let mut out = Vec::with_capacity(2 * self.splices.len() + 1);
        let mut at = 0;
        for (offset, b) in &self.splices {
            out.push(&self.buf[at..*offset]);
            out.push(&b[..]);
            at = *offset;
        }
        out.push(&self.buf[at..]);
        out.retain(|p| !p.is_empty());
        out
    }

    fn bytes(&mut self, b: &Bytes) {
        if b.len() < SPLICE_MIN {
            self.buf.put_slice(b);
        } else {
            self.splices.push((self.buf.len(), b.clone()));
        }
    }
}

fn flexible(version: i16) -> bool {
    version >= 9
}

fn put_len(f: &mut Frame, version: i16, len: usize, short: bool) -> Result<(), Error> {
    if flexible(version) {
        let n = u32::try_from(len + 1).map_err(|_| Error::Encode("length too large".into()))?;
        put_varint(&mut f.buf, n);
    } else if short {
        let n = i16::try_from(len).map_err(|_| Error::Encode("string too long".into()))?;
        f.buf.put_i16(n);
    } else {
        let n = i32::try_from(len).map_err(|_| Error::Encode("length too large".into()))?;
        f.buf.put_i32(n);
    }
    Ok(())
}

fn put_varint(buf: &mut BytesMut, mut n: u32) {
    while n >= 0x80 {
        buf.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

fn tags(f: &mut Frame, version: i16) {
    if flexible(version) {
        f.buf.put_u8(0); // no tagged fields
    }
}

/// Appends the body of a Produce request (no transactional id) at `version` to `f`:
/// one topic entry per run of `parts` with the same topic, in order.
pub fn encode(
    f: &mut Frame,
    parts: &[Part<'_>],
    acks: i16,
    timeout_ms: i32,
    version: i16,
) -> Result<(), Error> {
    if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
        return Err(Error::Encode(format!("produce version {version}")));
    }
    // transactional_id: null
    if flexible(version) {
        f.buf.put_u8(0);
    } else {
        f.buf.put_i16(-1);
    }
    f.buf.put_i16(acks);
    f.buf.put_i32(timeout_ms);
    let topics: Vec<&[Part<'_>]> = parts.chunk_by(|a, b| a.topic == b.topic).collect();
    put_len(f, version, topics.len(), false)?;
    for run in topics {
        let name = run[0].topic.as_bytes();
        put_len(f, version, name.len(), true)?;
        f.buf.put_slice(name);
        put_len(f, version, run.len(), false)?;
        for p in run {
            f.buf.put_i32(p.partition);
            put_len(f, version, p.records.len(), false)?;
            f.bytes(p.records);
            tags(f, version);
        }
        tags(f, version);
    }
    tags(f, version);
    Ok(())
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use proptest::prelude::*;

    use super::*;

    /// What `kafka-protocol` encodes for the same parts (topics grouped by runs).
    fn reference(parts: &[Part<'_>], acks: i16, timeout_ms: i32, version: i16) -> BytesMut {
        let mut topics: Vec<TopicProduceData> = Vec::new();
        for run in parts.chunk_by(|a, b| a.topic == b.topic) {
            let data = run
                .iter()
                .map(|p| {
                    PartitionProduceData::default()
                        .with_index(p.partition)
                        .with_records(Some(p.records.clone()))
                })
                .collect();
            topics.push(
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(run[0].topic.into())))
                    .with_partition_data(data),
            );
        }
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(topics);
        let mut out = BytesMut::new();
        req.encode(&mut out, version).unwrap();
        out
    }

    fn flat(f: &Frame) -> Vec<u8> {
        f.pieces().concat()
    }

    fn records(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    proptest! {
        #[test]
        fn the_body_is_what_kafka_protocol_encodes(
            version in MIN_VERSION..=MAX_VERSION,
            spec in prop::collection::vec((0u8..4, 0i32..3, 0usize..12_000), 0..12),
            acks in prop::sample::select(vec![-1i16, 0, 1]),
            timeout_ms in 0i32..100_000,
        ) {
            let topics = ["a", "sensors.t1", "cam_42", "x".repeat(300).leak()];
            let data: Vec<(String, i32, Bytes)> = spec
                .iter()
                .enumerate()
                .map(|(i, (t, p, len))| (topics[*t as usize].to_string(), *p, records(*len, i as u8)))
                .collect();
            let parts: Vec<Part<'_>> = data
                .iter()
                .map(|(t, p, r)| Part { topic: t, partition: *p, records: r })
                .collect();
            let mut f = Frame::default();
            encode(&mut f, &parts, acks, timeout_ms, version).unwrap();
            let want = reference(&parts, acks, timeout_ms, version);
            prop_assert_eq!(flat(&f), want.to_vec());
            prop_assert_eq!(f.len(), want.len());
            // Large batches are referenced, not copied.
            let large = parts.iter().filter(|p| p.records.len() >= SPLICE_MIN).count();
            prop_assert_eq!(f.splices.len(), large);
            prop_assert!(f.buf.len() < want.len() - large * SPLICE_MIN + 1);
        }
    }

    #[test]
    fn a_spliced_body_decodes_as_the_request() {
        let big = records(100_000, 7);
        let small = records(10, 9);
        let parts = [
            Part {
                topic: "t",
                partition: 0,
                records: &big,
            },
            Part {
                topic: "t",
                partition: 1,
                records: &small,
            },
            Part {
                topic: "u",
                partition: 0,
                records: &big,
            },
        ];
        for version in MIN_VERSION..=MAX_VERSION {
            let mut f = Frame::default();
            encode(&mut f, &parts, -1, 30_000, version).unwrap();
            assert_eq!(f.splices.len(), 2, "v{version}");
            assert!(
                f.buf.len() < 200,
                "v{version}: {} bytes copied",
                f.buf.len()
            );
            let mut bytes = Bytes::from(flat(&f));
            let req = ProduceRequest::decode(&mut bytes, version).unwrap();
            assert_eq!(req.acks, -1);
            assert_eq!(req.topic_data.len(), 2);
            assert_eq!(req.topic_data[0].partition_data.len(), 2);
            assert_eq!(
                req.topic_data[0].partition_data[0].records.as_ref(),
                Some(&big)
            );
            assert_eq!(
                req.topic_data[0].partition_data[1].records.as_ref(),
                Some(&small)
            );
            assert_eq!(req.topic_data[1].name.0.as_str(), "u");
        }
    }

    #[test]
    fn versions_outside_the_named_range_are_refused() {
        for version in [2, 13] {
            let mut f = Frame::default();
            assert!(encode(&mut f, &[], -1, 0, version).is_err());
        }
    }
}
