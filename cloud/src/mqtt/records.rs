//! One log, two views: MQTT messages <-> Kafka records (design brief section 3, "Records").
//!
//! An MQTT publish becomes one record: value = payload untouched, key = the publishing
//! client id, timestamp = arrival time (CreateTime), headers from [`common::headers`]
//! (`mqtt.topic`, `mqtt.qos`, `mqtt.retain`, MQTT 5 properties, `mqtt.user.<name>` per
//! user property). Records are encoded as one v2 RecordBatch with
//! `sequence = offset delta` (common's encoder), never re-encoded afterwards.
//!
//! Reading back, a record produced by any Kafka client becomes a publish on the MQTT
//! name of the topic it is stored in (its reverse-mapped name, or the stored alias of a
//! hashed name; the `mqtt.topic` header only where the topic has neither: see
//! [`decode`]);
//! `mqtt.*` property headers become MQTT 5 properties, `mqtt.user.<name>` headers and
//! any other header become user properties.

use bytes::Bytes;
use common::headers as h;
use common::kafka::batch::ProducerState;
use common::kafka::record_batch::{self, RecordView};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("cannot encode record batch: {0}")]
    Encode(String),
    #[error("cannot decode stored record batch: {0}")]
    Decode(String),
}

/// An application message as the broker routes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// MQTT 5 properties that travel with the message (no alias, no subscription ids).
    pub(crate) props: Option<PublishProperties>,
    /// Arrival time, ms since the epoch.
    pub(crate) timestamp_ms: i64,
}

impl Message {
    /// Whether the message expired (MQTT 5 message expiry) at `now_ms`.
    pub(crate) fn expired(&self, now_ms: i64) -> bool {
        match self.props.as_ref().and_then(|p| p.message_expiry_interval) {
            Some(s) => now_ms >= self.timestamp_ms + i64::from(s) * 1000,
            None => false,
        }
    }

    /// The expiry interval left at `now_ms`, for forwarding (MQTT 5 3.3.2.3.3).
    pub(crate) fn remaining_expiry(&self, now_ms: i64) -> Option<u32> {
        let s = self.props.as_ref()?.message_expiry_interval?;
        let left = (self.timestamp_ms + i64::from(s) * 1000 - now_ms).max(0) / 1000;
        Some(u32::try_from(left).unwrap_or(u32::MAX).max(1))
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn qos_num(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

pub(crate) fn qos_from(n: u8) -> Option<QoS> {
    match n {
        0 => Some(QoS::AtMostOnce),
        1 => Some(QoS::AtLeastOnce),
        2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}

/// Encodes messages as one uncompressed v2 batch (offset deltas 0.., sequence = delta),
/// one record each: value = payload, `key` (the publishing client id; none for a stored
/// retained message), timestamp = arrival time, headers from [`common::headers`]. The
/// headers are written straight from each message into the batch, so a publish without
/// properties allocates nothing but the batch (building records first cost the publish
/// path about 4k instructions per message, callgrind). The tests hold it byte-identical
/// to common's record encoder fed the same records.
pub(crate) fn encode_messages<M: std::borrow::Borrow<Message>>(
    msgs: &[M],
    key: Option<&[u8]>,
) -> Result<Bytes, RecordError> {
    let capacity = msgs
        .iter()
        .map(|m| {
            let m = m.borrow();
            m.payload.len() + m.topic.len() + key.map_or(0, <[u8]>::len) + 64
        })
        .sum();
    let mut w = record_batch::Writer::with_capacity(capacity);
    let qos_values: [&[u8]; 3] = [b"0", b"1", b"2"];
    for m in msgs {
        let m = m.borrow();
        let base: [record_batch::Header<'_>; 3] = [
            (h::MQTT_TOPIC.as_bytes(), Some(m.topic.as_bytes())),
            (
                h::MQTT_QOS.as_bytes(),
                Some(qos_values[usize::from(qos_num(m.qos))]),
            ),
            (h::MQTT_RETAIN.as_bytes(), Some(h::bool_value(m.retain))),
        ];
        let Some(p) = &m.props else {
            w.push(m.timestamp_ms, key, Some(&m.payload), base);
            continue;
        };
        // MQTT 5 properties: the same headers in the same order as `to_record`.
        let format = p.payload_format_indicator.map(|f| f.to_string());
        let expiry = p.message_expiry_interval.map(|e| e.to_string());
        let user_names: Vec<String> = p
            .user_properties
            .iter()
            .map(|(k, _)| h::user_property(k))
            .collect();
        let mut headers: Vec<record_batch::Header<'_>> = base.to_vec();
        if let Some(ct) = &p.content_type {
            headers.push((h::MQTT_CONTENT_TYPE.as_bytes(), Some(ct.as_bytes())));
        }
        if let Some(f) = &format {
            headers.push((h::MQTT_PAYLOAD_FORMAT.as_bytes(), Some(f.as_bytes())));
        }
        if let Some(e) = &expiry {
            headers.push((h::MQTT_MESSAGE_EXPIRY.as_bytes(), Some(e.as_bytes())));
        }
        if let Some(r) = &p.response_topic {
            headers.push((h::MQTT_RESPONSE_TOPIC.as_bytes(), Some(r.as_bytes())));
        }
        if let Some(c) = &p.correlation_data {
            headers.push((h::MQTT_CORRELATION_DATA.as_bytes(), Some(&c[..])));
        }
        for (name, (_, v)) in user_names.iter().zip(&p.user_properties) {
            headers.push((name.as_bytes(), Some(v.as_bytes())));
        }
        w.push(
            m.timestamp_ms,
            key,
            Some(&m.payload),
            headers.iter().copied(),
        );
    }
    w.finish(
        ProducerState::NONE,
        0,
        record_batch::Codec::None,
        &mut record_batch::Compressor::default(),
    )
    .map_err(|e| RecordError::Encode(e.to_string()))
}

/// One record read back from the log, as a message.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) offset: u64,
    pub(crate) key: Option<Bytes>,
    pub(crate) message: Message,
}

/// Decodes one stored batch into messages at offsets `>= from`. `log_topic` is the MQTT
/// name of the log topic the batch is stored in (its reverse-mapped name, or its alias),
/// when it has one: every record is read under that name, whatever its `mqtt.topic`
/// header says. Without it, a record's `mqtt.topic` header names it; records with
/// neither are skipped.
///
/// Why the header does not win: a Kafka producer may write any header, and a record
/// shown or retained under a topic other than the one it was stored in would let a
/// client allowed to write its own topic speak on another's (`acl`). Every record an
/// MQTT publish or an edge stores carries its topic's own name, so for them the two
/// agree.
///
/// Uncompressed and zstd batches (every MQTT publish, every edge batch) are read by
/// common's lean reader without copying payloads; gzip, snappy and lz4 batches from
/// other Kafka producers by `kafka-protocol`.
pub(crate) fn decode(
    batch: &Bytes,
    from: u64,
    log_topic: Option<&str>,
) -> Result<Vec<Stored>, RecordError> {
    let decode_err = |e: &dyn std::fmt::Display| RecordError::Decode(e.to_string());
    let views = crate::log::batch::records(batch).map_err(|e| decode_err(&e))?;
    let mut out = Vec::with_capacity(views.len());
    for r in views {
        if r.offset < 0 || (r.offset as u64) < from {
            continue;
        }
        let headers = r.headers.iter().map(|(k, v)| (&k[..], v.as_ref()));
        if let Some(message) = to_message(headers, r.value, r.timestamp, log_topic) {
            out.push(Stored {
                offset: r.offset as u64,
                key: r.key,
                message,
            });
        }
    }
    Ok(out)
}

/// Whether some record of a produced batch has `mqtt.retain` = `true` or `1`, read without
/// building messages (every MQTT and edge record carries the header, mostly `false`, so
/// the Produce path must not decode them all). Batches in codecs the lean reader leaves
/// to kafka-protocol answer `true`: [`decode`] decides.
pub(crate) fn sets_retained(batch: &Bytes) -> bool {
    let retained = |r: &RecordView| {
        r.headers.iter().any(|(k, v)| {
            &k[..] == h::MQTT_RETAIN.as_bytes() && matches!(v.as_deref(), Some(b"true" | b"1"))
        })
    };
    match record_batch::read(batch) {
        Ok(rs) => !rs.control && may_set_retained(rs.rest()) && rs.flatten().any(|r| retained(&r)),
        Err(record_batch::Error::Unsupported(_)) => true,
        Err(_) => false,
    }
}

/// Whether a (decompressed) record block can hold a `mqtt.retain` header set to `true` or
/// `1`: a record header is written as zigzag-varint key length, key, zigzag-varint value
/// length, value, so such a header is the encoded key followed by one of two encoded
/// values, found with a SIMD search instead of parsing every record (a drain of edge
/// records is almost all `false`). One pass for the key, checking the value at each hit:
/// every edge record holds the key, so a search per value (two passes, each stopping at
/// every record's key) was slower: 3.9-5.4 GB/s against 6.9-8.3 for this one on 1 MiB of
/// edge-like records (session 6; the search was 17% of the cloud's CPU in a drain).
fn may_set_retained(block: &[u8]) -> bool {
    static KEY: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let k = h::MQTT_RETAIN.as_bytes();
        // The key's length is under 64: one varint byte.
        let mut p = vec![(k.len() * 2) as u8];
        p.extend_from_slice(k);
        memchr::memmem::Finder::new(&p).into_owned()
    });
    let after = key.needle().len();
    key.find_iter(block).any(|at| {
        let value = &block[at + after..];
        // Value lengths 4 and 1, as zigzag varints: 8 and 2.
        value.starts_with(b"\x08true") || value.starts_with(b"\x021")
    })
}

/// The message for one record's headers and value; `None` without a topic name.
fn to_message<'a>(
    headers: impl Iterator<Item = (&'a [u8], Option<&'a Bytes>)>,
    value: Option<Bytes>,
    timestamp_ms: i64,
    log_topic: Option<&str>,
) -> Option<Message> {
    let mut topic: Option<String> = None;
    let mut qos = QoS::AtLeastOnce;
    let mut retain = false;
    let mut props = PublishProperties::default();
    let mut any_prop = false;
    for (k, v) in headers {
        let name = String::from_utf8_lossy(k);
        let text = || {
            v.map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        match name.as_ref() {
            h::MQTT_TOPIC => topic = Some(text()),
            h::MQTT_QOS => {
                qos = match v.map(|b| &b[..]) {
                    Some(b"0") => QoS::AtMostOnce,
                    Some(b"2") => QoS::ExactlyOnce,
                    _ => QoS::AtLeastOnce,
                }
            }
            h::MQTT_RETAIN => retain = matches!(v.map(|b| &b[..]), Some(b"true" | b"1")),
            h::MQTT_CONTENT_TYPE => {
                props.content_type = Some(text());
                any_prop = true;
            }
            h::MQTT_PAYLOAD_FORMAT => {
                props.payload_format_indicator = text().parse().ok();
                any_prop = true;
            }
            h::MQTT_MESSAGE_EXPIRY => {
                props.message_expiry_interval = text().parse().ok();
                any_prop = true;
            }
            h::MQTT_RESPONSE_TOPIC => {
                props.response_topic = Some(text());
                any_prop = true;
            }
            h::MQTT_CORRELATION_DATA => {
                props.correlation_data = v.cloned();
                any_prop = true;
            }
            other => {
                let user = other.strip_prefix(h::MQTT_USER_PREFIX).unwrap_or(other);
                props.user_properties.push((user.to_string(), text()));
                any_prop = true;
            }
        }
    }
    let topic = log_topic
        .map(str::to_string)
        .or(topic)
        .filter(|t| !t.is_empty())?;
    Some(Message {
        topic,
        payload: value.unwrap_or_default(),
        qos,
        retain,
        props: any_prop.then_some(props),
        timestamp_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::kafka::batch::{encode_batch, BatchRecord};
    use kafka_protocol::records::Compression;

    /// The record for one message, built field by field: the oracle `encode_messages` is
    /// checked against.
    fn to_record(m: &Message, key: Option<Bytes>) -> BatchRecord {
        let s = |v: &str| Some(Bytes::copy_from_slice(v.as_bytes()));
        let mut headers = vec![
            (h::MQTT_TOPIC.to_string(), s(&m.topic)),
            (h::MQTT_QOS.to_string(), s(&qos_num(m.qos).to_string())),
            (
                h::MQTT_RETAIN.to_string(),
                Some(Bytes::from_static(h::bool_value(m.retain))),
            ),
        ];
        if let Some(p) = &m.props {
            if let Some(ct) = &p.content_type {
                headers.push((h::MQTT_CONTENT_TYPE.to_string(), s(ct)));
            }
            if let Some(f) = p.payload_format_indicator {
                headers.push((h::MQTT_PAYLOAD_FORMAT.to_string(), s(&f.to_string())));
            }
            if let Some(e) = p.message_expiry_interval {
                headers.push((h::MQTT_MESSAGE_EXPIRY.to_string(), s(&e.to_string())));
            }
            if let Some(r) = &p.response_topic {
                headers.push((h::MQTT_RESPONSE_TOPIC.to_string(), s(r)));
            }
            if let Some(c) = &p.correlation_data {
                headers.push((h::MQTT_CORRELATION_DATA.to_string(), Some(c.clone())));
            }
            for (k, v) in &p.user_properties {
                headers.push((h::user_property(k), s(v)));
            }
        }
        BatchRecord {
            key,
            value: Some(m.payload.clone()),
            headers,
            timestamp_ms: m.timestamp_ms,
        }
    }

    /// Encodes records as one uncompressed v2 batch (offset deltas 0.., sequence = delta).
    fn encode(records: &[BatchRecord]) -> Result<Bytes, RecordError> {
        encode_batch(records, ProducerState::NONE, 0, Compression::None)
            .map_err(|e| RecordError::Encode(e.to_string()))
    }

    #[test]
    fn message_round_trips_through_a_batch() {
        let props = PublishProperties {
            content_type: Some("application/json".into()),
            user_properties: vec![("site".into(), "a".into()), ("line".into(), "7".into())],
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            response_topic: Some("r/1".into()),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            ..Default::default()
        };
        let m = Message {
            topic: "factory/line1/cam7".into(),
            payload: Bytes::from_static(b"{}"),
            qos: QoS::ExactlyOnce,
            retain: true,
            props: Some(props),
            timestamp_ms: 1234,
        };
        let recs = vec![
            to_record(&m, Some(Bytes::from_static(b"c1"))),
            to_record(&m, None),
        ];
        let b = encode(&recs).expect("encode");
        let back = decode(&b, 1, None).expect("decode");
        assert_eq!(back.len(), 1, "offsets below `from` are skipped");
        assert_eq!(back[0].offset, 1);
        assert_eq!(back[0].message, m);
        let all = decode(&b, 0, None).expect("decode");
        assert_eq!(all[0].key.as_deref(), Some(&b"c1"[..]));
    }

    #[test]
    fn a_header_naming_another_topic_does_not_move_the_record() {
        let rec = BatchRecord {
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: vec![
                (
                    h::MQTT_TOPIC.into(),
                    Some(Bytes::from_static(b"devices/bob/cmd")),
                ),
                (h::MQTT_RETAIN.into(), Some(Bytes::from_static(b"true"))),
            ],
            timestamp_ms: 5,
        };
        let b = encode(&[rec]).expect("encode");
        let got = decode(&b, 0, Some("devices/alice/x")).expect("decode");
        assert_eq!(got[0].message.topic, "devices/alice/x");
        assert!(got[0].message.retain);
        // A log topic without an MQTT name: the header is all there is.
        let got = decode(&b, 0, None).expect("decode");
        assert_eq!(got[0].message.topic, "devices/bob/cmd");
    }

    #[test]
    fn foreign_records_use_the_log_topics_name_and_headers_become_user_properties() {
        let rec = BatchRecord {
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: vec![("trace".into(), Some(Bytes::from_static(b"x")))],
            timestamp_ms: 5,
        };
        let b = encode(&[rec]).expect("encode");
        let got = decode(&b, 0, Some("a/b")).expect("decode");
        assert_eq!(got[0].message.topic, "a/b");
        assert_eq!(got[0].message.qos, QoS::AtLeastOnce);
        let props = got[0].message.props.clone().expect("props");
        assert_eq!(
            props.user_properties,
            vec![("trace".to_string(), "x".to_string())]
        );
        assert!(
            decode(&b, 0, None).expect("decode").is_empty(),
            "no name, no message"
        );
    }

    #[test]
    fn gzip_batches_from_kafka_producers_decode_too() {
        use kafka_protocol::records::{
            Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let mut headers = kafka_protocol::indexmap::IndexMap::new();
        headers.insert(
            kafka_protocol::protocol::StrBytes::from_static_str(h::MQTT_TOPIC),
            Some(Bytes::from_static(b"plant/7")),
        );
        let records: Vec<Record> = (0..3)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: i as i32,
                timestamp: 10 + i,
                key: None,
                value: Some(Bytes::from(format!("v{i}"))),
                headers: headers.clone(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::Gzip,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &opts).expect("encode");
        let got = decode(&buf.freeze(), 1, None).expect("decode");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].offset, 1);
        assert_eq!(got[1].message.topic, "plant/7");
        assert_eq!(got[1].message.payload, Bytes::from_static(b"v2"));
        assert_eq!(got[1].message.timestamp_ms, 12);
    }

    #[test]
    fn only_batches_with_a_retained_record_need_decoding() {
        let mut m = Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            props: None,
            timestamp_ms: 1,
        };
        let plain = encode(&[to_record(&m, None), to_record(&m, None)]).expect("encode");
        assert!(!sets_retained(&plain));
        m.retain = true;
        let mixed = encode(&[to_record(&m, None)]).expect("encode");
        assert!(sets_retained(&mixed));
    }

    /// Edge-style zstd batches (every record has `mqtt.retain`): the byte-string search
    /// finds `true` and `1` among many `false`, and a payload that merely contains the
    /// header's bytes falls back to the record parse, which answers no.
    #[test]
    fn retained_search_in_compressed_batches() {
        use common::kafka::record_batch::{Codec, Compressor, Writer};
        let batch = |retains: &[&[u8]], payload: &[u8]| {
            let mut w = Writer::default();
            for r in retains {
                w.push(
                    1,
                    None,
                    Some(payload),
                    [
                        (h::MQTT_TOPIC.as_bytes(), Some(&b"a/b"[..])),
                        (h::MQTT_RETAIN.as_bytes(), Some(*r)),
                    ],
                );
            }
            w.finish(
                ProducerState::NONE,
                0,
                Codec::Zstd,
                &mut Compressor::default(),
            )
            .expect("encode")
        };
        let falses = vec![&b"false"[..]; 500];
        assert!(!sets_retained(&batch(&falses, b"x")));
        for yes in [&b"true"[..], b"1"] {
            let mut v = falses.clone();
            v[317] = yes;
            assert!(sets_retained(&batch(&v, b"x")), "{yes:?}");
        }
        let lookalike = b"\x16mqtt.retain\x08true";
        assert!(may_set_retained(lookalike));
        assert!(!sets_retained(&batch(&falses, lookalike)));
    }

    #[test]
    fn expiry() {
        let mut m = Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            props: Some(PublishProperties {
                message_expiry_interval: Some(10),
                ..Default::default()
            }),
            timestamp_ms: 1_000,
        };
        assert!(!m.expired(5_000));
        assert_eq!(m.remaining_expiry(5_000), Some(6));
        assert!(m.expired(11_000));
        m.props = None;
        assert!(!m.expired(i64::MAX));
    }

    proptest::proptest! {
        /// What `mqtt::recent` keeps in memory (the message as published) is what the
        /// stored record decodes to, so delivery from memory and from the store agree.
        #[test]
        fn to_record_then_decode_gives_the_message_back(
            topic in "[a-z/+#$]{1,12}",
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            qos in 0u8..3,
            retain in proptest::bool::ANY,
            content_type in proptest::option::of("[ -~]{0,8}"),
            format in proptest::option::of(0u8..2),
            expiry in proptest::option::of(proptest::num::u32::ANY),
            response in proptest::option::of("[a-z/]{0,8}"),
            correlation in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..8)),
            user in proptest::collection::vec(("[ -~]{0,8}", "\\PC{0,8}"), 0..4),
            timestamp_ms in 0i64..i64::MAX / 2,
        ) {
            let props = PublishProperties {
                content_type,
                payload_format_indicator: format,
                message_expiry_interval: expiry,
                response_topic: response,
                correlation_data: correlation.map(Bytes::from),
                user_properties: user,
                ..Default::default()
            };
            let m = Message {
                topic,
                payload: Bytes::from(payload),
                qos: match qos { 0 => QoS::AtMostOnce, 1 => QoS::AtLeastOnce, _ => QoS::ExactlyOnce },
                retain,
                // As the session builds it: no properties is `None`.
                props: Some(props).filter(|p| *p != PublishProperties::default()),
                timestamp_ms,
            };
            let key = Bytes::from_static(b"client");
            let b = encode(&[to_record(&m, Some(key.clone()))]).expect("encode");
            // The publish path's encoder writes the same bytes, for one message and many.
            let m = std::sync::Arc::new(m);
            proptest::prop_assert_eq!(&encode_messages(std::slice::from_ref(&m), Some(&key)).expect("encode"), &b);
            // Without a key, as a retained message is stored.
            proptest::prop_assert_eq!(
                &encode_messages(std::slice::from_ref(&m), None).expect("encode"),
                &encode(&[to_record(&m, None)]).expect("encode")
            );
            let mut later = (*m).clone();
            later.timestamp_ms += 7;
            later.retain = !later.retain;
            let two = [m.clone(), std::sync::Arc::new(later.clone())];
            let records = [to_record(&m, Some(key.clone())), to_record(&later, Some(key.clone()))];
            proptest::prop_assert_eq!(
                &encode_messages(&two, Some(&key)).expect("encode"),
                &encode(&records).expect("encode")
            );
            let back = decode(&b, 0, None).expect("decode");
            proptest::prop_assert_eq!(back.len(), 1);
            proptest::prop_assert_eq!(&back[0].message, &*m);
            proptest::prop_assert_eq!(back[0].key.as_ref(), Some(&key));
        }
    }
}
