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

use bytes::{BufMut, Bytes};

use super::frame::{put_len, put_tags, Frame};
use super::Error;

/// Highest Produce version this encoder speaks.
pub const MAX_VERSION: i16 = 12;
/// Lowest Produce version this encoder speaks (`kafka-protocol` 0.18's floor).
pub const MIN_VERSION: i16 = 3;

/// One topic-partition's record batches.
pub struct Part<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition index.
    pub partition: i32,
    /// Encoded RecordBatch(es).
    pub records: &'a Bytes,
}

/// Whether `version` is a flexible (KIP-482) Produce version.
fn flexible(version: i16) -> bool {
    version >= 9
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
    let flex = flexible(version);
    // transactional_id: null
    if flex {
        f.buf.put_u8(0);
    } else {
        f.buf.put_i16(-1);
    }
    f.buf.put_i16(acks);
    f.buf.put_i32(timeout_ms);
    let topics: Vec<&[Part<'_>]> = parts.chunk_by(|a, b| a.topic == b.topic).collect();
    put_len(f, flex, topics.len(), false)?;
    for run in topics {
        let name = run[0].topic.as_bytes();
        put_len(f, flex, name.len(), true)?;
        f.buf.put_slice(name);
        put_len(f, flex, run.len(), false)?;
        for p in run {
            f.buf.put_i32(p.partition);
            put_len(f, flex, p.records.len(), false)?;
            f.put_bytes(p.records);
            put_tags(f, flex);
        }
        put_tags(f, flex);
    }
    put_tags(f, flex);
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use proptest::prelude::*;

    use super::super::frame::SPLICE_MIN;
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
