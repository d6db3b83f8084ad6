//! MQTT framing for 3.1.1 and 5 over rumqttc's `mqttbytes` codecs (no sockets, no tokio).
//!
//! The session works on one packet model, rumqttc's v5 types (a superset of 3.1.1): 3.1.1
//! packets are converted to v5 on decode and back on encode. The first packet of a
//! connection must be CONNECT; its protocol level picks the version for the rest.
//!
//! Decoding tells "need more bytes" (`Ok(None)`) from "bad bytes" (`Err`), and checks the
//! packet size against the maximum before the frame is buffered further.
//! rumqttc quirks handled here: its v5 decoder rejects a DISCONNECT with remaining length
//! 0 or a reason code without a property length (both legal), and its v5
//! encoder writes a reason-only DISCONNECT one byte longer than its remaining length.

use bytes::{Buf, BufMut, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5::Connect;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter, LastWill, Login, Packet, PubAck,
    PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, Publish,
    RetainForwardRule, Subscribe, SubscribeReasonCode, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;

/// The protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Why bytes could not be decoded (or a packet encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    TooLarge { size: usize, max: usize },
    #[error("the first packet is not CONNECT")]
    NotConnect,
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// Parses the fixed header: `Ok(Some((header_len, remaining_len)))`, `Ok(None)` if more
/// bytes are needed.
pub(crate) fn frame_header(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, len)));
        }
    }
    Err(CodecError::Malformed(
        "remaining length longer than 4 bytes".into(),
    ))
}

/// Checks that a complete frame is buffered and within `max`; `Ok(None)` if incomplete.
fn complete_frame(buf: &BytesMut, max: usize) -> Result<Option<usize>, CodecError> {
    let Some((header, remaining)) = frame_header(buf)? else {
        return Ok(None);
    };
    let size = header + remaining;
    if size > max {
        return Err(CodecError::TooLarge { size, max });
    }
    Ok((buf.len() >= size).then_some(size))
}

/// Decodes the first packet of a connection, which must be CONNECT, and returns the
/// version it asks for.
pub(crate) fn decode_connect(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<(Version, Packet)>, CodecError> {
    if let Some(&b) = buf.first() {
        if b >> 4 != 1 {
            return Err(CodecError::NotConnect);
        }
    }
    let Some(size) = complete_frame(buf, max)? else {
        return Ok(None);
    };
    let (header, _) =
        frame_header(buf)?.ok_or_else(|| CodecError::Malformed("truncated".into()))?;
    let mut vh = &buf[header..size];
    if vh.len() < 2 {
        return Err(CodecError::Malformed(
            "connect without protocol name".into(),
        ));
    }
    let name_len = vh.get_u16() as usize;
    if vh.len() < name_len + 1 {
        return Err(CodecError::Malformed(
            "connect without protocol level".into(),
        ));
    }
    let name = String::from_utf8_lossy(&vh[..name_len]).into_owned();
    let level = vh[name_len];
    let version = match (name.as_str(), level) {
        ("MQTT", 4) => Version::V4,
        ("MQTT", 5) => Version::V5,
        _ => return Err(CodecError::UnsupportedProtocol { name, level }),
    };
    match decode(buf, version, max)? {
        Some(p) => Ok(Some((version, p))),
        None => Err(CodecError::Malformed("connect frame vanished".into())),
    }
}

/// Decodes one packet of a connection that already chose `version`.
pub(crate) fn decode(
    buf: &mut BytesMut,
    version: Version,
    max: usize,
) -> Result<Option<Packet>, CodecError> {
    let Some(size) = complete_frame(buf, max)? else {
        return Ok(None);
    };
    let bad = |e: &dyn std::fmt::Display| CodecError::Malformed(e.to_string());
    match version {
        Version::V5 => {
            // DISCONNECT without properties (remaining length 0 or 1): rumqttc insists
            // on a property length, which the spec makes optional here.
            if buf[0] == 0xe0 && buf[1] <= 1 {
                let reason = match buf[1] {
                    0 => DisconnectReasonCode::NormalDisconnection,
                    _ => DisconnectReasonCode::try_from(buf[2]).map_err(|e| bad(&e))?,
                };
                buf.advance(size);
                return Ok(Some(Packet::Disconnect(Disconnect {
                    reason_code: reason,
                    properties: None,
                })));
            }
            let p = Packet::read(buf, None).map_err(|e| bad(&e))?;
            Ok(Some(p))
        }
        Version::V4 => {
            let p = v4::Packet::read(buf, usize::MAX).map_err(|e| bad(&e))?;
            from_v4(p).map(Some)
        }
    }
}

fn from_v4(p: v4::Packet) -> Result<Packet, CodecError> {
    Ok(match p {
        v4::Packet::Connect(c) => {
            let will = c.last_will.map(|w| LastWill {
                topic: w.topic.into_bytes().into(),
                message: w.message,
                qos: qos5(w.qos),
                retain: w.retain,
                properties: None,
            });
            let login = c.login.map(|l| Login {
                username: l.username,
                password: l.password,
            });
            let connect = Connect {
                keep_alive: c.keep_alive,
                client_id: c.client_id,
                clean_start: c.clean_session,
                properties: None,
            };
            Packet::Connect(connect, will, login)
        }
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos5(p.qos),
            retain: p.retain,
            topic: p.topic.into_bytes().into(),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        v4::Packet::PubAck(a) => Packet::PubAck(PubAck {
            pkid: a.pkid,
            reason: PubAckReason::Success,
            properties: None,
        }),
        v4::Packet::PubRec(a) => Packet::PubRec(PubRec {
            pkid: a.pkid,
            reason: PubRecReason::Success,
            properties: None,
        }),
        v4::Packet::PubRel(a) => Packet::PubRel(PubRel {
            pkid: a.pkid,
            reason: PubRelReason::Success,
            properties: None,
        }),
        v4::Packet::PubComp(a) => Packet::PubComp(PubComp {
            pkid: a.pkid,
            reason: PubCompReason::Success,
            properties: None,
        }),
        v4::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| Filter {
                    path: f.path,
                    qos: qos5(f.qos),
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
            properties: None,
        }),
        v4::Packet::PingReq => Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq),
        v4::Packet::Disconnect => Packet::Disconnect(Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
            properties: None,
        }),
        other => {
            return Err(CodecError::Malformed(format!(
                "a client may not send {other:?}"
            )))
        }
    })
}

fn qos5(q: rumqttc::mqttbytes::QoS) -> QoS {
    match q {
        rumqttc::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos4(q: QoS) -> rumqttc::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

/// Encodes a packet the server sends. 3.1.1 has no server DISCONNECT: `Ok(false)` means
/// "nothing to write, close the connection".
pub(crate) fn encode(p: &Packet, version: Version, out: &mut BytesMut) -> Result<bool, CodecError> {
    let bad = |e: &dyn std::fmt::Display| CodecError::Malformed(e.to_string());
    if version == Version::V5 {
        if let Packet::Disconnect(d) = p {
            if d.properties.is_none() {
                // rumqttc 0.25 writes a reason-only DISCONNECT with remaining length 1 but
                // two bytes after it (reason + an empty property length): write it here.
                out.extend_from_slice(&[0xe0, 0x01, d.reason_code as u8]);
                return Ok(true);
            }
        }
        p.write(out, None).map_err(|e| bad(&e))?;
        return Ok(true);
    }
    let p4 = match p {
        Packet::ConnAck(c) => v4::Packet::ConnAck(v4::ConnAck {
            session_present: c.session_present,
            code: connack_code4(c.code),
        }),
        Packet::Publish(p) => return write_publish4(p, out).map(|()| true),
        Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck { pkid: a.pkid }),
        Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec { pkid: a.pkid }),
        Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel { pkid: a.pkid }),
        Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp { pkid: a.pkid }),
        Packet::SubAck(s) => v4::Packet::SubAck(v4::SubAck {
            pkid: s.pkid,
            return_codes: s
                .return_codes
                .iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(q) => v4::SubscribeReasonCode::Success(qos4(*q)),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        }),
        Packet::UnsubAck(u) => v4::Packet::UnsubAck(v4::UnsubAck { pkid: u.pkid }),
        Packet::PingResp(_) => v4::Packet::PingResp,
        Packet::Disconnect(_) => return Ok(false),
        other => {
            return Err(CodecError::Malformed(format!(
                "the server does not send {other:?} over 3.1.1"
            )))
        }
    };
    p4.write(out, usize::MAX).map_err(|e| bad(&e))?;
    Ok(true)
}

/// Largest remaining length MQTT's variable-length integer can state.
const MAX_REMAINING: usize = 268_435_455;

/// Writes a 3.1.1 PUBLISH straight from the v5 packet: rumqttc's v4 type wants the topic
/// as an owned `String`, which cost one allocation and copy per delivery (proptested
/// against rumqttc's encoder in `codec_tests`).
fn write_publish4(p: &Publish, out: &mut BytesMut) -> Result<(), CodecError> {
    let topic_len = u16::try_from(p.topic.len())
        .map_err(|_| CodecError::Malformed("topic longer than 65535 bytes".into()))?;
    let pkid_len = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
    let len = 2 + p.topic.len() + pkid_len + p.payload.len();
    if len > MAX_REMAINING {
        return Err(CodecError::Malformed(format!("PUBLISH of {len} bytes")));
    }
    out.reserve(5 + len);
    let qos = match p.qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    };
    out.put_u8(0x30 | (u8::from(p.dup) << 3) | (qos << 1) | u8::from(p.retain));
    let mut rest = len;
    loop {
        let byte = (rest % 128) as u8;
        rest /= 128;
        if rest == 0 {
            out.put_u8(byte);
            break;
        }
        out.put_u8(byte | 0x80);
    }
    out.put_u16(topic_len);
    out.extend_from_slice(&p.topic);
    if pkid_len > 0 {
        out.put_u16(p.pkid);
    }
    out.extend_from_slice(&p.payload);
    Ok(())
}

fn connack_code4(c: ConnectReturnCode) -> v4::ConnectReturnCode {
    use ConnectReturnCode as C;
    match c {
        C::Success => v4::ConnectReturnCode::Success,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => {
            v4::ConnectReturnCode::RefusedProtocolVersion
        }
        C::BadClientId | C::ClientIdentifierNotValid => v4::ConnectReturnCode::BadClientId,
        C::BadUserNamePassword => v4::ConnectReturnCode::BadUserNamePassword,
        C::NotAuthorized | C::Banned => v4::ConnectReturnCode::NotAuthorized,
        _ => v4::ConnectReturnCode::ServiceUnavailable,
    }
}

/// Size in bytes of `p` once encoded (the v5 size, an upper bound for 3.1.1).
pub(crate) fn encoded_len(p: &Packet) -> usize {
    p.size()
}
