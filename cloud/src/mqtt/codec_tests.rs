//! Codec: golden bytes as real clients send them, need-more vs bad bytes, limits.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubAckReason, Publish, SubAck, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;

use super::codec::*;

/// CONNECT as mosquitto_sub 2.0 sends it (3.1.1, clean session, keep alive 60, id "c1").
const V4_CONNECT: &[u8] = &[
    0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x02, b'c', b'1',
];
/// CONNECT as paho (MQTT 5) sends it: clean start, keep alive 60, no properties, id "c1".
const V5_CONNECT: &[u8] = &[
    0x10, 0x0f, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x02, b'c',
    b'1',
];

#[test]
fn connect_picks_the_version_and_needs_whole_frames() {
    for (bytes, want) in [(V4_CONNECT, Version::V4), (V5_CONNECT, Version::V5)] {
        for cut in 0..bytes.len() {
            let mut b = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                decode_connect(&mut b, 1024),
                Ok(None),
                "prefix of {cut} bytes"
            );
        }
        let mut b = BytesMut::from(bytes);
        let (v, p) = decode_connect(&mut b, 1024)
            .expect("decodes")
            .expect("complete");
        assert_eq!(v, want);
        let Packet::Connect(c, will, login) = p else {
            panic!("not connect")
        };
        assert_eq!(c.client_id, "c1");
        assert_eq!(c.keep_alive, 60);
        assert!(c.clean_start);
        assert!(will.is_none() && login.is_none());
        assert!(b.is_empty());
    }
}

#[test]
fn bad_first_packets() {
    let mut b = BytesMut::from(&[0xc0u8, 0x00][..]);
    assert_eq!(decode_connect(&mut b, 1024), Err(CodecError::NotConnect));
    let mut mqisdp = vec![0x10, 0x10, 0x00, 0x06];
    mqisdp.extend_from_slice(b"MQIsdp");
    mqisdp.extend_from_slice(&[0x03, 0x02, 0x00, 0x3c, 0x00, 0x02, b'c', b'1']);
    let mut b = BytesMut::from(&mqisdp[..]);
    assert!(matches!(
        decode_connect(&mut b, 1024),
        Err(CodecError::UnsupportedProtocol { level: 3, .. })
    ));
    let mut b = BytesMut::from(V4_CONNECT);
    assert_eq!(
        decode_connect(&mut b, 10),
        Err(CodecError::TooLarge { size: 16, max: 10 })
    );
    // Size is judged from the header alone, before the body arrives.
    let mut b = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0x7f][..]);
    assert!(matches!(
        decode(&mut b, Version::V4, 1 << 20),
        Err(CodecError::TooLarge { .. })
    ));
    let mut b = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
    assert!(matches!(
        decode(&mut b, Version::V4, usize::MAX),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn v5_short_disconnect_is_normal() {
    let mut b = BytesMut::from(&[0xe0u8, 0x00][..]);
    let p = decode(&mut b, Version::V5, 1024)
        .expect("ok")
        .expect("complete");
    assert!(
        matches!(p, Packet::Disconnect(d) if d.reason_code == rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::NormalDisconnection)
    );
    let mut b = BytesMut::from(&[0xe0u8, 0x00][..]);
    assert!(matches!(
        decode(&mut b, Version::V4, 1024),
        Ok(Some(Packet::Disconnect(_)))
    ));
}

#[test]
fn v4_publish_and_acks() {
    // PUBLISH QoS 1, topic "a/b", pkid 7, payload "hi".
    let bytes = [
        0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x07, b'h', b'i',
    ];
    let mut b = BytesMut::from(&bytes[..]);
    let Some(Packet::Publish(p)) = decode(&mut b, Version::V4, 1024).expect("ok") else {
        panic!("publish")
    };
    assert_eq!(
        (p.qos, p.pkid, &p.topic[..], &p.payload[..]),
        (QoS::AtLeastOnce, 7, &b"a/b"[..], &b"hi"[..])
    );
    let mut out = BytesMut::new();
    encode(
        &Packet::PubAck(PubAck {
            pkid: 7,
            reason: PubAckReason::Success,
            properties: None,
        }),
        Version::V4,
        &mut out,
    )
    .expect("encode");
    assert_eq!(&out[..], &[0x40, 0x02, 0x00, 0x07]);
    out.clear();
    let ack = ConnAck {
        session_present: true,
        code: ConnectReturnCode::Success,
        properties: None,
    };
    encode(&Packet::ConnAck(ack), Version::V4, &mut out).expect("encode");
    assert_eq!(&out[..], &[0x20, 0x02, 0x01, 0x00]);
    out.clear();
    let sub = SubAck {
        pkid: 1,
        return_codes: vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::TopicFilterInvalid,
        ],
        properties: None,
    };
    encode(&Packet::SubAck(sub), Version::V4, &mut out).expect("encode");
    assert_eq!(&out[..], &[0x90, 0x04, 0x00, 0x01, 0x01, 0x80]);
}

#[test]
fn many_packets_in_one_buffer() {
    let mut b = BytesMut::new();
    for _ in 0..3 {
        b.put_slice(&[0xc0, 0x00]);
    }
    b.put_slice(&[0x30, 0x05]);
    for _ in 0..3 {
        assert!(matches!(
            decode(&mut b, Version::V4, 1024),
            Ok(Some(Packet::PingReq(_)))
        ));
    }
    assert_eq!(decode(&mut b, Version::V4, 1024), Ok(None));
}

proptest! {
    #[test]
    fn v4_publish_matches_rumqttc(
        topic in "[a-z/]{1,40}",
        // Up to a 3-byte remaining length.
        payload in proptest::collection::vec(any::<u8>(), 0..20_000),
        qos in 0u8..3,
        dup in any::<bool>(),
        retain in any::<bool>(),
        pkid in 1u16..,
    ) {
        let qos5 = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(qos)];
        let qos4 = [
            rumqttc::mqttbytes::QoS::AtMostOnce,
            rumqttc::mqttbytes::QoS::AtLeastOnce,
            rumqttc::mqttbytes::QoS::ExactlyOnce,
        ][usize::from(qos)];
        let pkid = if qos == 0 { 0 } else { pkid };
        let p = Publish {
            dup,
            qos: qos5,
            retain,
            topic: Bytes::from(topic.clone()),
            pkid,
            payload: Bytes::from(payload.clone()),
            properties: None,
        };
        let mut ours = BytesMut::new();
        encode(&Packet::Publish(p), Version::V4, &mut ours).expect("encode");
        let mut theirs = BytesMut::new();
        rumqttc::mqttbytes::v4::Packet::Publish(rumqttc::mqttbytes::v4::Publish {
            dup,
            qos: qos4,
            retain,
            topic,
            pkid,
            payload: Bytes::from(payload),
        })
        .write(&mut theirs, usize::MAX)
        .expect("rumqttc encode");
        prop_assert_eq!(&ours[..], &theirs[..]);
    }

    #[test]
    fn decoding_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), v5 in any::<bool>()) {
        let mut b = BytesMut::from(&data[..]);
        let _ = decode_connect(&mut b, 4096);
        let mut b = BytesMut::from(&data[..]);
        let version = if v5 { Version::V5 } else { Version::V4 };
        while let Ok(Some(_)) = decode(&mut b, version, 4096) {}
    }
}

#[test]
fn v5_reason_only_disconnect_is_three_bytes() {
    use rumqttc::v5::mqttbytes::v5::{Disconnect, DisconnectReasonCode};
    let mut out = BytesMut::new();
    let d = Disconnect {
        reason_code: DisconnectReasonCode::PacketTooLarge,
        properties: None,
    };
    encode(&Packet::Disconnect(d), Version::V5, &mut out).expect("encode");
    assert_eq!(&out[..], &[0xe0, 0x01, 0x95]);
    let mut again = out.clone();
    assert!(matches!(
        decode(&mut again, Version::V5, 1024),
        Ok(Some(Packet::Disconnect(_)))
    ));
}
