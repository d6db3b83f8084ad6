//! The Fetch response body, encoded for a gather write (bytes only, no I/O).
//!
//! A Fetch response is almost all stored record batches, each already a [`Bytes`] read
//! from the log. `kafka-protocol`'s `FetchResponse` takes one byte string per partition,
//! so the handler concatenated a partition's batches (a copy) and the encoder copied them
//! again into the response buffer, which then stayed as large as the largest response
//! (up to a consumer's `fetch.max.bytes`, 50 MiB by default). Here the batches go into a
//! [`Frame`] as splices and the server writes them with vectored writes; the bytes on
//! the wire are exactly what `kafka-protocol` encodes (tested for every version served).
//!
//! Versions 4-12 (the versions the cloud serves): topics by name; no aborted
//! transactions (the log refuses transactional batches); no preferred read replica.

use bytes::{BufMut, Bytes};
use common::kafka::frame::{put_len, put_tags, Frame};
use kafka_protocol::protocol::StrBytes;

/// Lowest Fetch response version this encoder speaks.
pub const MIN_VERSION: i16 = 4;
/// Highest Fetch response version this encoder speaks (13 names topics by id).
pub const MAX_VERSION: i16 = 12;

/// One partition's answer.
#[derive(Debug, Clone, Default)]
pub struct Partition {
    pub partition_index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Whole stored record batches, in offset order (none: an empty record set).
    pub batches: Vec<Bytes>,
}

/// One topic's answer.
#[derive(Debug, Clone, Default)]
pub struct Topic {
    pub name: StrBytes,
    pub partitions: Vec<Partition>,
}

/// A Fetch response body (no fetch sessions: `session_id` 0, no throttling).
#[derive(Debug, Clone, Default)]
pub struct Body {
    pub error_code: i16,
    pub topics: Vec<Topic>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fetch response version {0} is not served")]
    Version(i16),
    #[error(transparent)]
    Encode(#[from] common::kafka::Error),
}

/// Appends `body` encoded at `version` to `f`, splicing large batches.
pub fn encode(f: &mut Frame, body: &Body, version: i16) -> Result<(), Error> {
    if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
        return Err(Error::Version(version));
    }
    let flex = version >= 12;
    f.buf.put_i32(0); // throttle_time_ms
    if version >= 7 {
        f.buf.put_i16(body.error_code);
        f.buf.put_i32(0); // session_id
    }
    put_len(f, flex, body.topics.len(), false)?;
    for t in &body.topics {
        put_len(f, flex, t.name.len(), true)?;
        f.buf.put_slice(t.name.as_bytes());
        put_len(f, flex, t.partitions.len(), false)?;
        for p in &t.partitions {
            f.buf.put_i32(p.partition_index);
            f.buf.put_i16(p.error_code);
            f.buf.put_i64(p.high_watermark);
            f.buf.put_i64(p.last_stable_offset);
            if version >= 5 {
                f.buf.put_i64(p.log_start_offset);
            }
            put_len(f, flex, 0, false)?; // aborted_transactions: empty
            if version >= 11 {
                f.buf.put_i32(-1); // preferred_read_replica
            }
            let len = p.batches.iter().map(Bytes::len).sum();
            put_len(f, flex, len, false)?;
            for b in &p.batches {
                f.put_bytes(b);
            }
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
    use common::kafka::frame::SPLICE_MIN;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{BrokerId, FetchResponse, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable};
    use proptest::prelude::*;

    use super::*;

    /// What `kafka-protocol` encodes for the same body (each partition's batches joined),
    /// built as the handler built it before this encoder.
    fn reference(body: &Body, version: i16) -> BytesMut {
        let mut r = FetchResponse::default();
        r.error_code = body.error_code;
        r.responses = body
            .topics
            .iter()
            .map(|t| {
                let mut ft = FetchableTopicResponse::default();
                ft.topic = TopicName(t.name.clone());
                ft.partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut pd = PartitionData::default();
                        pd.partition_index = p.partition_index;
                        pd.error_code = p.error_code;
                        pd.high_watermark = p.high_watermark;
                        pd.last_stable_offset = p.last_stable_offset;
                        pd.log_start_offset = p.log_start_offset;
                        pd.preferred_read_replica = BrokerId(-1);
                        pd.records = Some(p.batches.concat().into());
                        pd
                    })
                    .collect();
                ft
            })
            .collect();
        let mut out = BytesMut::new();
        r.encode(&mut out, version).unwrap();
        out
    }

    fn batch(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ seed)
            .collect()
    }

    fn partition() -> impl Strategy<Value = Partition> {
        (
            any::<i32>(),
            prop_oneof![Just(0i16), Just(1i16), any::<i16>()],
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            proptest::collection::vec(
                prop_oneof![0usize..64, 4000usize..5000, 9000usize..20_000],
                0..4,
            ),
            any::<u8>(),
        )
            .prop_map(|(i, e, hw, ls, st, sizes, seed)| Partition {
                partition_index: i,
                error_code: e,
                high_watermark: hw,
                last_stable_offset: ls,
                log_start_offset: st,
                batches: sizes
                    .iter()
                    .enumerate()
                    .map(|(k, n)| batch(*n, seed ^ k as u8))
                    .collect(),
            })
    }

    fn body() -> impl Strategy<Value = Body> {
        (
            any::<i16>(),
            proptest::collection::vec(
                (
                    "[a-zA-Z0-9._-]{0,40}",
                    proptest::collection::vec(partition(), 0..4),
                ),
                0..4,
            ),
        )
            .prop_map(|(error_code, topics)| Body {
                error_code,
                topics: topics
                    .into_iter()
                    .map(|(name, partitions)| Topic {
                        name: StrBytes::from_string(name),
                        partitions,
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn the_body_is_what_kafka_protocol_encodes(b in body(), version in MIN_VERSION..=MAX_VERSION) {
            let mut f = Frame::default();
            encode(&mut f, &b, version).unwrap();
            let want = reference(&b, version);
            prop_assert_eq!(f.pieces().concat(), want.to_vec());
            // Every large batch is spliced, nothing else is.
            let large = b
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .flat_map(|p| &p.batches)
                .filter(|x| x.len() >= SPLICE_MIN)
                .count();
            prop_assert_eq!(f.splices.len(), large);
        }
    }

    #[test]
    fn a_spliced_body_decodes_at_every_version() {
        let body = Body {
            error_code: 0,
            topics: vec![Topic {
                name: StrBytes::from_static_str("plant.line1"),
                partitions: vec![
                    Partition {
                        partition_index: 0,
                        high_watermark: 10,
                        last_stable_offset: 10,
                        batches: vec![batch(5000, 1), batch(10, 2), batch(8000, 3)],
                        ..Default::default()
                    },
                    Partition {
                        partition_index: 1,
                        error_code: 1,
                        high_watermark: -1,
                        last_stable_offset: -1,
                        log_start_offset: -1,
                        ..Default::default()
                    },
                ],
            }],
        };
        for version in MIN_VERSION..=MAX_VERSION {
            let mut f = Frame::default();
            encode(&mut f, &body, version).unwrap();
            assert_eq!(f.splices.len(), 2, "v{version}");
            let mut flat = Bytes::from(f.pieces().concat());
            let r = FetchResponse::decode(&mut flat, version).unwrap();
            let ps = &r.responses[0].partitions;
            assert_eq!(r.responses[0].topic.0.as_str(), "plant.line1");
            assert_eq!(
                ps[0].records.as_deref(),
                Some(&body.topics[0].partitions[0].batches.concat()[..]),
                "v{version}"
            );
            assert_eq!(ps[1].error_code, 1);
            assert_eq!(ps[1].records.as_deref(), Some(&[][..]));
        }
    }

    #[test]
    fn versions_outside_the_served_range_are_refused() {
        let mut f = Frame::default();
        assert!(matches!(
            encode(&mut f, &Body::default(), 3),
            Err(Error::Version(3))
        ));
        assert!(matches!(
            encode(&mut f, &Body::default(), 13),
            Err(Error::Version(13))
        ));
    }
}
