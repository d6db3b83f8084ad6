//! Replicator state without I/O: which records go in which Produce batch, in what order.
//!
//! Per Kafka topic (partition 0, so per-topic order is total) the state keeps:
//! - `batches`: Produce batches with a persisted descriptor, oldest first; each is
//!   (re)sent with the same bytes until acknowledged;
//! - `restored`: descriptors loaded at start whose records are still being read back;
//! - `unsent`: records read from the buffer that have no batch yet.
//!
//! Invariants: a topic's records are batched in buffer-sequence order; no new batch is cut
//! while a restored descriptor of that topic is incomplete; at most `max_in_flight`
//! batches per topic are on the wire.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use common::headers;
use common::kafka::record_batch::{Codec, Header, Writer, HEADER_LEN};

use crate::buffer::uplink::Inflight;
use crate::buffer::Record;

/// A Produce batch with a persisted descriptor.
#[derive(Debug, Clone)]
pub struct OutBatch {
    /// Record bytes before encoding (request sizes; the memory bound until encoded).
    pub raw_bytes: usize,
    /// Producer sequence of its first record.
    pub base: i32,
    /// Buffer sequences, in order.
    pub seqs: Vec<u64>,
    /// The priority class of each record (same order as `seqs`): the buffer finds a
    /// released record's batch by class and sequence.
    pub priorities: Vec<u8>,
    /// Payload bytes (for metrics).
    pub payload_bytes: u64,
    /// The encoded RecordBatch, resent unchanged.
    pub encoded: Bytes,
    /// Whether it is on the wire in the current session.
    pub sent: bool,
    /// A backlog batch of a live-first drain (its acknowledgement raises the backlog
    /// watermark).
    pub backlog: bool,
}

impl OutBatch {
    /// Whether its cut has finished (encoded, descriptor durable): only then may it be
    /// sent. An encoded RecordBatch is never empty (its header alone is 61 bytes).
    pub fn ready(&self) -> bool {
        !self.encoded.is_empty()
    }

    /// The bytes it holds in memory, for the pipeline bound: its records until its cut
    /// has finished, then only the encoded batch (the records are dropped once encoded).
    pub fn held(&self) -> usize {
        if self.ready() {
            self.encoded.len()
        } else {
            self.raw_bytes
        }
    }
}

/// A descriptor from before a restart, being refilled.
#[derive(Debug)]
pub struct Restored {
    /// The descriptor.
    pub desc: Inflight,
    /// Records found so far, by position.
    pub slots: Vec<Option<Record>>,
}

/// One topic's state.
#[derive(Debug, Default)]
pub struct TopicState {
    /// The MQTT name (for logs).
    pub mqtt: String,
    /// Highest acknowledged buffer sequence (live records during a live-first drain).
    pub acked_through: Option<u64>,
    /// During a live-first drain: highest acknowledged backlog sequence.
    pub acked_backlog: Option<u64>,
    /// Batches with descriptors, oldest first.
    pub batches: VecDeque<OutBatch>,
    /// Restored descriptors, oldest first.
    pub restored: VecDeque<Restored>,
    /// Records without a batch (live records during a live-first drain).
    pub unsent: VecDeque<Record>,
    /// During a live-first drain: backlog records without a batch.
    pub unsent_backlog: VecDeque<Record>,
    /// Bytes in `unsent`.
    pub unsent_bytes: usize,
    /// Leader address, once looked up in this session.
    pub leader: Option<String>,
}

/// All topics plus the index of restored descriptors.
#[derive(Debug, Default)]
pub struct State {
    /// Kafka topic -> state.
    pub topics: HashMap<String, TopicState>,
    /// Buffer sequence -> (Kafka topic, descriptor index, slot).
    pub expected: HashMap<u64, (String, usize)>,
    /// Total bytes held in `unsent` queues.
    pub unsent_bytes: usize,
    /// Bytes held by batches not acknowledged yet ([`OutBatch::held`]).
    pub batched_bytes: usize,
}

/// What to do with a record read from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Placed {
    /// Already acknowledged before a restart: release it.
    AlreadyAcked,
    /// Queued for sending.
    Queued,
}

impl State {
    /// Registers descriptors found at start.
    pub fn restore(&mut self, descs: Vec<Inflight>) {
        for d in descs {
            let t = self.topics.entry(d.topic.clone()).or_default();
            for (slot, seq) in d.seqs.iter().enumerate() {
                self.expected.insert(*seq, (d.topic.clone(), slot));
            }
            t.restored.push_back(Restored {
                slots: vec![None; d.seqs.len()],
                desc: d,
            });
        }
    }

    /// Places a record read from the buffer. `live_from` is the boundary of a live-first
    /// drain in progress: records below it are backlog, checked against and queued
    /// apart from the live ones.
    pub fn place(&mut self, kafka_topic: &str, rec: Record, live_from: Option<u64>) -> Placed {
        if !self.topics.contains_key(kafka_topic) {
            self.topics
                .insert(kafka_topic.to_owned(), TopicState::default());
        }
        let Some(t) = self.topics.get_mut(kafka_topic) else {
            return Placed::Queued;
        };
        if t.mqtt.is_empty() {
            t.mqtt = rec.topic.clone();
        }
        let backlog = live_from.is_some_and(|l| rec.seq < l);
        let watermark = if backlog {
            t.acked_backlog
        } else {
            t.acked_through
        };
        if watermark.is_some_and(|a| rec.seq <= a) {
            return Placed::AlreadyAcked;
        }
        let restored = if self.expected.is_empty() {
            None
        } else {
            self.expected.remove(&rec.seq)
        };
        if let Some((_, slot)) = restored {
            if let Some(r) = t
                .restored
                .iter_mut()
                .find(|r| r.desc.seqs.get(slot) == Some(&rec.seq))
            {
                r.slots[slot] = Some(rec);
                return Placed::Queued;
            }
        }
        let size = rec.encoded_len();
        t.unsent_bytes += size;
        self.unsent_bytes += size;
        if backlog {
            t.unsent_backlog.push_back(rec);
        } else {
            t.unsent.push_back(rec);
        }
        Placed::Queued
    }

    /// Whether any backlog record of a live-first drain is still queued, batched or
    /// being restored (`live_from` is the boundary).
    pub fn backlog_pending(&self, live_from: u64) -> bool {
        self.topics.values().any(|t| {
            !t.unsent_backlog.is_empty()
                || t.batches.iter().any(|b| b.backlog)
                || t.restored
                    .iter()
                    .any(|r| r.desc.seqs.first().is_some_and(|s| *s < live_from))
        })
    }

    /// Marks every restored descriptor whose records the reader has passed as complete
    /// (records lost to corruption are left out, with a log line).
    /// `passed(max)` tells whether the reader has read past sequence `max` in the stream
    /// holding it (or read everything).
    pub fn finish_restored(&mut self, passed: impl Fn(u64) -> bool) {
        for t in self.topics.values_mut() {
            for r in &mut t.restored {
                let max = r.desc.seqs.iter().max().copied();
                let passed = max.is_none_or(&passed);
                if passed && r.slots.iter().any(Option::is_none) {
                    tracing::error!(topic = %r.desc.topic, base = r.desc.base_seq, "in-flight batch lost records; resending the rest");
                    for (slot, seq) in r.desc.seqs.iter().enumerate() {
                        if r.slots[slot].is_none() {
                            self.expected.remove(seq);
                        }
                    }
                    r.desc.seqs = r
                        .desc
                        .seqs
                        .iter()
                        .zip(&r.slots)
                        .filter(|(_, s)| s.is_some())
                        .map(|(q, _)| *q)
                        .collect();
                    r.slots.retain(Option::is_some);
                }
            }
        }
    }
}

/// Appends a buffered record to a Kafka batch per the header contract, straight from the
/// record's bytes: no per-record allocation unless it has MQTT 5 user properties.
pub fn push_record(w: &mut Writer, rec: &Record, edge_id: &str) {
    let mut seq_buf = [0u8; 20];
    let mut pf_buf = [0u8; 20];
    let user_names: Vec<String> = rec
        .props
        .user
        .iter()
        .map(|(k, _)| headers::user_property(k))
        .collect();
    let qos: &[u8] = match rec.qos {
        0 => b"0",
        1 => b"1",
        _ => b"2",
    };
    let head: [Header<'_>; 3] = [
        (headers::MQTT_TOPIC.as_bytes(), Some(rec.topic.as_bytes())),
        (headers::MQTT_QOS.as_bytes(), Some(qos)),
        (
            headers::MQTT_RETAIN.as_bytes(),
            Some(headers::bool_value(rec.retain)),
        ),
    ];
    let p = &rec.props;
    let optional: [Option<Header<'_>>; 4] = [
        p.content_type
            .as_ref()
            .map(|ct| (headers::MQTT_CONTENT_TYPE.as_bytes(), Some(ct.as_bytes()))),
        p.payload_format.map(|pf| {
            (
                headers::MQTT_PAYLOAD_FORMAT.as_bytes(),
                Some(decimal(u64::from(pf), &mut pf_buf)),
            )
        }),
        p.response_topic
            .as_ref()
            .map(|rt| (headers::MQTT_RESPONSE_TOPIC.as_bytes(), Some(rt.as_bytes()))),
        p.correlation_data
            .as_ref()
            .map(|cd| (headers::MQTT_CORRELATION_DATA.as_bytes(), Some(&cd[..]))),
    ];
    let user = user_names
        .iter()
        .zip(&p.user)
        .map(|(name, (_, v))| (name.as_bytes(), Some(v.as_bytes())));
    let tail: [Header<'_>; 3] = [
        (headers::EDGE_ID.as_bytes(), Some(edge_id.as_bytes())),
        (
            headers::EDGE_SEQ.as_bytes(),
            Some(decimal(rec.seq, &mut seq_buf)),
        ),
        (
            headers::EDGE_CLOCK_SYNCED.as_bytes(),
            Some(headers::bool_value(rec.clock_synced)),
        ),
    ];
    w.push(
        rec.recv_ms,
        rec.key.as_deref(),
        Some(&rec.payload[..]),
        head.into_iter()
            .chain(optional.into_iter().flatten())
            .chain(user)
            .chain(tail),
    );
}

/// An upper bound of the bytes [`push_record`] adds to a record block for `rec`, a few
/// bytes above the exact size (the length prefix, timestamp and offset deltas at their
/// widest). The replicator cuts batches by it so that a batch, encoded and compressed,
/// stays under the broker's `max.message.bytes`.
pub fn kafka_len_bound(rec: &Record, edge_id: &str) -> usize {
    // A length-prefixed field: the zigzag varint of its length, then its bytes.
    let field = |len: usize| varint_len(len) + len;
    let header = |name: &str, value: usize| field(name.len()) + field(value);
    let p = &rec.props;
    let mut headers = 6;
    let mut n = header(headers::MQTT_TOPIC, rec.topic.len())
        + header(headers::MQTT_QOS, 1)
        + header(headers::MQTT_RETAIN, 5)
        + header(headers::EDGE_ID, edge_id.len())
        + header(headers::EDGE_SEQ, 20)
        + header(headers::EDGE_CLOCK_SYNCED, 5);
    if let Some(c) = &p.content_type {
        n += header(headers::MQTT_CONTENT_TYPE, c.len());
        headers += 1;
    }
    if p.payload_format.is_some() {
        n += header(headers::MQTT_PAYLOAD_FORMAT, 3);
        headers += 1;
    }
    if let Some(r) = &p.response_topic {
        n += header(headers::MQTT_RESPONSE_TOPIC, r.len());
        headers += 1;
    }
    if let Some(c) = &p.correlation_data {
        n += header(headers::MQTT_CORRELATION_DATA, c.len());
        headers += 1;
    }
    for (k, v) in &p.user {
        n += field(headers::MQTT_USER_PREFIX.len() + k.len()) + field(v.len());
        headers += 1;
    }
    // Length prefix, attributes, timestamp delta, offset delta at their widest.
    let key = rec.key.as_ref().map_or(1, |k| field(k.len()));
    5 + 1 + 10 + 5 + key + field(rec.payload.len()) + varint_len(headers) + n
}

/// Bytes of the zigzag varint of a length.
fn varint_len(len: usize) -> usize {
    let mut z = (len as u64) << 1;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

/// An upper bound of a RecordBatch holding records whose [`kafka_len_bound`]s sum to
/// `records`: the header plus the record block, compressed. zstd stores a block that
/// does not compress as it is, behind 3 bytes per 128 KiB and a frame header; lz4 and
/// gzip (miniz codes random bytes with Huffman blocks, about 0.07% larger) get the
/// looser `n / 255` that both stay under. The proptest below checks the bound against
/// the encoder in every codec.
pub fn batch_len_bound(records: usize, codec: Codec) -> usize {
    let block = match codec {
        Codec::None => records,
        Codec::Zstd => records + records / 4096 + 128,
        Codec::Lz4 | Codec::Gzip => records + records / 255 + 256,
    };
    HEADER_LEN + block
}

/// `v` in decimal ASCII, written into `buf`.
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            topic: "a/b".into(),
            ..Record::default()
        }
    }

    /// The pipeline bound counts a batch's records until it is encoded, then only its
    /// encoded bytes (what stays in memory for a resend).
    #[test]
    fn a_batch_holds_its_records_until_encoded_then_its_encoded_bytes() {
        let mut b = OutBatch {
            raw_bytes: 1000,
            base: 0,
            seqs: vec![1, 2],
            priorities: vec![0, 0],
            payload_bytes: 900,
            encoded: Bytes::new(),
            sent: false,
            backlog: false,
        };
        assert!(!b.ready());
        assert_eq!(b.held(), 1000);
        b.encoded = Bytes::from(vec![0u8; 300]);
        assert!(b.ready());
        assert_eq!(b.held(), 300);
    }

    #[test]
    fn restored_descriptors_collect_their_records() {
        let mut s = State::default();
        s.restore(vec![Inflight {
            topic: "a.b".into(),
            partition: 0,
            base_seq: 7,
            seqs: vec![3, 5],
        }]);
        s.topics.get_mut("a.b").unwrap().acked_through = Some(2);
        assert_eq!(s.place("a.b", rec(1), None), Placed::AlreadyAcked);
        assert_eq!(s.place("a.b", rec(3), None), Placed::Queued);
        assert_eq!(s.place("a.b", rec(4), None), Placed::Queued);
        assert_eq!(s.place("a.b", rec(5), None), Placed::Queued);
        let t = &s.topics["a.b"];
        assert!(t.restored[0].slots.iter().all(Option::is_some));
        assert_eq!(t.unsent.len(), 1);
        assert_eq!(t.unsent[0].seq, 4);
    }

    #[test]
    fn live_first_streams_have_their_own_watermarks() {
        let mut s = State::default();
        let t = s.topics.entry("a.b".into()).or_default();
        t.acked_backlog = Some(3);
        t.acked_through = Some(12);
        // Boundary 10: 2 and 3 are acknowledged backlog, 4 is not; 11 and 12 are
        // acknowledged live records, 13 is not.
        for (seq, want) in [
            (2, true),
            (3, true),
            (4, false),
            (11, true),
            (12, true),
            (13, false),
        ] {
            let placed = s.place("a.b", rec(seq), Some(10));
            assert_eq!(placed == Placed::AlreadyAcked, want, "seq {seq}");
        }
        let t = &s.topics["a.b"];
        assert_eq!(
            t.unsent_backlog.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [4]
        );
        assert_eq!(t.unsent.iter().map(|r| r.seq).collect::<Vec<_>>(), [13]);
        assert!(s.backlog_pending(10));
    }

    #[test]
    fn header_contract() {
        let mut r = rec(9);
        r.qos = 1;
        r.recv_ms = 1_234;
        r.key = Some(bytes::Bytes::from_static(b"client"));
        r.payload = bytes::Bytes::from_static(b"hello");
        r.props.user.push(("k".into(), "v".into()));
        r.props.payload_format = Some(1);
        let mut w = Writer::default();
        push_record(&mut w, &r, "e1");
        let mut r2 = rec(1_234_567_890);
        r2.clock_synced = true;
        push_record(&mut w, &r2, "e1");
        let batch = w
            .finish(
                common::kafka::ProducerState::NONE,
                0,
                common::kafka::record_batch::Codec::None,
                &mut Default::default(),
            )
            .unwrap();
        let recs: Vec<_> = common::kafka::record_batch::read(&batch)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let text = |h: &[(bytes::Bytes, Option<bytes::Bytes>)]| -> Vec<(String, String)> {
            h.iter()
                .map(|(k, v)| {
                    let v = v.as_deref().unwrap_or_default();
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect()
        };
        let want = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            text(&recs[0].headers),
            want(&[
                ("mqtt.topic", "a/b"),
                ("mqtt.qos", "1"),
                ("mqtt.retain", "false"),
                ("mqtt.payload_format", "1"),
                ("mqtt.user.k", "v"),
                ("edge.id", "e1"),
                ("edge.seq", "9"),
                ("edge.clock_synced", "false"),
            ])
        );
        assert_eq!(recs[0].timestamp, 1_234);
        assert_eq!(recs[0].key.as_deref(), Some(&b"client"[..]));
        assert_eq!(recs[0].value.as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            text(&recs[1].headers)[3..],
            want(&[
                ("edge.id", "e1"),
                ("edge.seq", "1234567890"),
                ("edge.clock_synced", "true"),
            ])[..]
        );
    }

    fn arb_record() -> impl proptest::strategy::Strategy<Value = Record> {
        use proptest::prelude::*;
        (
            (any::<u64>(), 0i64..4_000_000_000_000, 0u8..3, any::<bool>()),
            "[a-z/]{1,40}",
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            (
                proptest::option::of("[a-z/]{0,30}"),
                proptest::option::of(any::<u8>()),
                proptest::collection::vec(("[a-z]{0,12}", "[a-z]{0,20}"), 0..4),
            ),
            // Random bytes (incompressible) or runs (compressible).
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200_000),
                (0usize..300_000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
            ],
        )
            .prop_map(
                |((seq, recv_ms, qos, retain), topic, key, (ct, pf, user), payload)| Record {
                    seq,
                    recv_ms,
                    qos,
                    retain,
                    topic,
                    key: key.map(Bytes::from),
                    props: crate::buffer::Props {
                        content_type: ct.clone(),
                        payload_format: pf,
                        response_topic: ct,
                        correlation_data: None,
                        user,
                    },
                    payload: Bytes::from(payload),
                    ..Record::default()
                },
            )
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(40))]
        /// The bounds the replicator cuts batches by are never below what the encoder
        /// writes, in every codec: a batch cut under `cloud.max_message_bytes` by the
        /// bound is under it encoded.
        #[test]
        fn the_cut_bounds_hold_for_every_record_and_codec(
            recs in proptest::collection::vec(arb_record(), 1..4),
            edge_id in "[a-z0-9-]{0,40}",
        ) {
            use common::kafka::record_batch::Compressor;
            use common::kafka::ProducerState;
            let producer = ProducerState { producer_id: 7, producer_epoch: 0 };
            for codec in [Codec::None, Codec::Zstd, Codec::Lz4, Codec::Gzip] {
                let mut w = Writer::default();
                let mut bound = 0;
                for r in &recs {
                    let mut alone = Writer::default();
                    push_record(&mut alone, r, &edge_id);
                    let len = alone.finish(producer, 0, Codec::None, &mut Compressor::default())
                        .unwrap().len() - HEADER_LEN;
                    let k = kafka_len_bound(r, &edge_id);
                    proptest::prop_assert!(len <= k, "{len} > {k}");
                    push_record(&mut w, r, &edge_id);
                    bound += k;
                }
                let batch = w.finish(producer, 0, codec, &mut Compressor::default()).unwrap();
                proptest::prop_assert!(batch.len() <= batch_len_bound(bound, codec),
                    "{codec:?}: {} > {}", batch.len(), batch_len_bound(bound, codec));
            }
        }
    }
}
