//! Encodings of what the MQTT view stores: persistent sessions (subscriptions plus one
//! committed log position per cursor — never message copies), share groups (one
//! committed log position per partition their filter matches) and retained messages
//! (one record in a RecordBatch, the same encoding as the log), and pending delayed wills
//! (their due time plus the will message, encoded as a retained message is).

use bytes::{Buf, BufMut, Bytes};
use rumqttc::v5::mqttbytes::QoS;

use super::records::{self, qos_from, qos_num, Message};
use super::session::SubOptions;

/// Format 2 appends the disconnect time (format 1 had none); format 3 then appends the
/// sent marks.
const SESSION_FORMAT: u8 = 3;

/// A session as stored: what survives a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SavedSession {
    pub(crate) expiry: u32,
    pub(crate) subscriptions: Vec<(String, SubOptions)>,
    /// `(log topic, partition, next offset to deliver)`.
    pub(crate) cursors: Vec<(String, u32, u64)>,
    /// `(log topic, partition, next offset not yet sent)`: the messages from the cursor's
    /// position up to this one were sent and not acknowledged, so a resumed session sends
    /// them again with DUP set (empty in formats 1 and 2).
    pub(crate) sent: Vec<(String, u32, u64)>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.put_u32(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn get_str(b: &mut &[u8]) -> Option<String> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    if b.remaining() < n {
        return None;
    }
    let s = std::str::from_utf8(&b[..n]).ok()?.to_string();
    b.advance(n);
    Some(s)
}

/// Log positions as stored: `count u32 | (len u32 | topic | partition u32 | offset u64)*`.
fn put_cursors(b: &mut Vec<u8>, cursors: &[(String, u32, u64)]) {
    b.put_u32(cursors.len() as u32);
    for (t, p, o) in cursors {
        put_str(b, t);
        b.put_u32(*p);
        b.put_u64(*o);
    }
}

fn get_cursors(b: &mut &[u8]) -> Option<Vec<(String, u32, u64)>> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    let mut cursors = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let t = get_str(b)?;
        if b.remaining() < 12 {
            return None;
        }
        cursors.push((t, b.get_u32(), b.get_u64()));
    }
    Some(cursors)
}

impl SavedSession {
    /// Encodes the session; `disconnected_ms` is when its client disconnected (ms since
    /// the epoch; 0 while connected), from which its expiry is counted after a restart.
    pub(crate) fn encode(&self, disconnected_ms: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.put_u8(SESSION_FORMAT);
        b.put_u32(self.expiry);
        b.put_u32(self.subscriptions.len() as u32);
        for (f, o) in &self.subscriptions {
            put_str(&mut b, f);
            b.put_u8(qos_num(o.qos));
            b.put_u8(u8::from(o.no_local) | u8::from(o.retain_as_published) << 1);
            b.put_u8(o.retain_handling);
            b.put_u32(o.id.map(|i| i as u32).unwrap_or(0));
        }
        put_cursors(&mut b, &self.cursors);
        b.put_u64(disconnected_ms);
        put_cursors(&mut b, &self.sent);
        b
    }

    /// Decodes a stored session and its disconnect time (0: unknown or connected).
    pub(crate) fn decode(mut b: &[u8]) -> Option<(SavedSession, u64)> {
        let b = &mut b;
        if b.remaining() < 9 {
            return None;
        }
        let format = b.get_u8();
        if !(1..=SESSION_FORMAT).contains(&format) {
            return None;
        }
        let expiry = b.get_u32();
        let n = b.get_u32() as usize;
        let mut subscriptions = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let f = get_str(b)?;
            if b.remaining() < 7 {
                return None;
            }
            let qos: QoS = qos_from(b.get_u8())?;
            let flags = b.get_u8();
            let retain_handling = b.get_u8();
            let id = b.get_u32();
            let opts = SubOptions {
                qos,
                no_local: flags & 1 != 0,
                retain_as_published: flags & 2 != 0,
                retain_handling,
                id: (id != 0).then_some(id as usize),
            };
            subscriptions.push((f, opts));
        }
        let cursors = get_cursors(b)?;
        let disconnected_ms = match format {
            1 => 0,
            _ if b.remaining() >= 8 => b.get_u64(),
            _ => return None,
        };
        let sent = match format {
            3 => get_cursors(b)?,
            _ => Vec::new(),
        };
        let saved = SavedSession {
            expiry,
            subscriptions,
            cursors,
            sent,
        };
        Some((saved, disconnected_ms))
    }
}

/// Format of a stored share group (the first byte; unknown formats are not decoded).
const SHARE_FORMAT: u8 = 1;

/// A share group as stored: where the group resumes when it gets a member again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SavedShareGroup {
    /// `(log topic, partition, oldest offset no member has finished)`.
    pub(crate) cursors: Vec<(String, u32, u64)>,
}

impl SavedShareGroup {
    /// Encodes the group; `left_ms` is when its last member left (ms since the epoch; 0
    /// while it has members), from which its expiry is counted after a restart.
    ///
    /// Format 1: `1u8 | left_ms u64 | count u32 | (len u32 | topic | partition u32 |
    /// offset u64) * count`, big-endian.
    pub(crate) fn encode(&self, left_ms: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(13 + self.cursors.len() * 32);
        b.put_u8(SHARE_FORMAT);
        b.put_u64(left_ms);
        put_cursors(&mut b, &self.cursors);
        b
    }

    /// Decodes a stored group and the time its last member left (0: it had members).
    /// `None` for an unknown format, truncated or trailing bytes.
    pub(crate) fn decode(mut b: &[u8]) -> Option<(SavedShareGroup, u64)> {
        let b = &mut b;
        if b.remaining() < 13 || b.get_u8() != SHARE_FORMAT {
            return None;
        }
        let left_ms = b.get_u64();
        let cursors = get_cursors(b)?;
        if b.has_remaining() {
            return None;
        }
        Some((SavedShareGroup { cursors }, left_ms))
    }
}

/// A retained message as stored.
pub(crate) fn encode_retained(m: &Message) -> Result<Vec<u8>, records::RecordError> {
    Ok(records::encode_messages(std::slice::from_ref(m), None)?.to_vec())
}

pub(crate) fn decode_retained(v: &[u8]) -> Option<Message> {
    let b = Bytes::copy_from_slice(v);
    records::decode(&b, 0, None)
        .ok()?
        .into_iter()
        .next()
        .map(|s| s.message)
}

/// Formats of a stored will (the first byte; unknown formats are not decoded): a will
/// due at a time, and a will armed by a live connection ([`WillDue`]).
const WILL_AT: u8 = 1;
const WILL_ARMED: u8 = 2;

/// Why a stored will could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WillError {
    #[error("unknown stored will format {0}")]
    Format(u8),
    #[error("stored will truncated")]
    Truncated,
    #[error("stored will message: {0}")]
    Record(#[from] records::RecordError),
    #[error("stored will holds {0} messages, not one")]
    NotOne(usize),
    #[error("bytes after the stored will's batch")]
    Trailing,
}

/// A will as stored under `W|client`: published when due unless its client reconnects
/// first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredWill {
    /// When it is due.
    pub(crate) due: WillDue,
    /// The will message, with the MQTT 5 properties the will carried.
    pub(crate) message: Message,
}

/// When a stored will is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WillDue {
    /// Its connection is gone: due at this time, ms since the epoch (wall clock, so it
    /// means the same after a restart). MQTT 5 Will Delay Interval.
    At(u64),
    /// Its connection `conn` was open when stored: due `wait_ms` after that connection
    /// is lost. Found at a start, the connection was lost with the previous process.
    Armed { wait_ms: u64, conn: u64 },
}

impl StoredWill {
    /// Format 1 (`At`): `1u8 | due_ms u64 | one-record RecordBatch`; format 2 (`Armed`):
    /// `2u8 | wait_ms u64 | conn u64 | RecordBatch` (big-endian; the batch as
    /// [`encode_retained`] writes it).
    pub(crate) fn encode(&self) -> Result<Vec<u8>, records::RecordError> {
        let batch = encode_retained(&self.message)?;
        let mut b = Vec::with_capacity(17 + batch.len());
        match self.due {
            WillDue::At(due_ms) => {
                b.put_u8(WILL_AT);
                b.put_u64(due_ms);
            }
            WillDue::Armed { wait_ms, conn } => {
                b.put_u8(WILL_ARMED);
                b.put_u64(wait_ms);
                b.put_u64(conn);
            }
        }
        b.put_slice(&batch);
        Ok(b)
    }

    pub(crate) fn decode(v: &[u8]) -> Result<StoredWill, WillError> {
        let mut b = v;
        if b.remaining() < 9 {
            return Err(WillError::Truncated);
        }
        let due = match b.get_u8() {
            WILL_AT => WillDue::At(b.get_u64()),
            WILL_ARMED if b.remaining() >= 16 => WillDue::Armed {
                wait_ms: b.get_u64(),
                conn: b.get_u64(),
            },
            WILL_ARMED => return Err(WillError::Truncated),
            format => return Err(WillError::Format(format)),
        };
        // The batch's own length (after its base offset) must cover exactly the rest.
        let len = b
            .get(8..12)
            .map(|l| i32::from_be_bytes([l[0], l[1], l[2], l[3]]));
        match len {
            None => return Err(WillError::Truncated),
            Some(n) if n >= 0 && 12 + (n as usize) < b.len() => return Err(WillError::Trailing),
            Some(_) => {}
        }
        let mut stored = records::decode(&Bytes::copy_from_slice(b), 0, None)?;
        if stored.len() != 1 {
            return Err(WillError::NotOne(stored.len()));
        }
        let message = stored.remove(0).message;
        Ok(StoredWill { due, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn session_round_trip(expiry in any::<u32>(),
                              subs in proptest::collection::vec(("[a-z/#+]{1,20}", 0u8..3, any::<bool>(), any::<bool>(), 0u8..3, 0u32..1000), 0..8),
                              cursors in proptest::collection::vec(("[a-z._]{1,20}", any::<u32>(), any::<u64>()), 0..8),
                              sent in proptest::collection::vec(("[a-z._]{1,20}", any::<u32>(), any::<u64>()), 0..8),
                           gone in any::<u64>()) {
            let s = SavedSession {
                expiry,
                subscriptions: subs.into_iter().map(|(f, q, nl, rap, rh, id)| (f, SubOptions {
                    qos: qos_from(q).expect("qos"), no_local: nl, retain_as_published: rap, retain_handling: rh,
                    id: (id != 0).then_some(id as usize),
                })).collect(),
                cursors,
                sent,
            };
            prop_assert_eq!(SavedSession::decode(&s.encode(gone)), Some((s, gone)));
        }

        #[test]
        fn share_group_round_trip(cursors in proptest::collection::vec(("[a-zA-Z0-9._-]{1,40}", any::<u32>(), any::<u64>()), 0..8),
                                  left in any::<u64>()) {
            let g = SavedShareGroup { cursors };
            prop_assert_eq!(SavedShareGroup::decode(&g.encode(left)), Some((g, left)));
        }

        #[test]
        fn share_group_decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = SavedShareGroup::decode(&b);
        }

        #[test]
        fn session_decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SavedSession::decode(&b);
        }
    }

    #[test]
    fn session_format_2_still_decodes_without_sent_marks() {
        let s = SavedSession {
            expiry: 60,
            subscriptions: vec![],
            cursors: vec![("a.b".into(), 0, 7)],
            sent: vec![],
        };
        let mut v = s.encode(9);
        // Format 3 is format 2 plus the sent marks (here an empty list: 4 bytes).
        v.truncate(v.len() - 4);
        v[0] = 2;
        assert_eq!(SavedSession::decode(&v), Some((s.clone(), 9)));
        let marked = SavedSession {
            sent: vec![("a.b".into(), 0, 9)],
            ..s
        };
        assert_eq!(SavedSession::decode(&marked.encode(9)), Some((marked, 9)));
    }

    #[test]
    fn share_group_format_1_bytes() {
        let g = SavedShareGroup {
            cursors: vec![("a.b".into(), 2, 7)],
        };
        let mut want = vec![1u8];
        want.extend_from_slice(&9u64.to_be_bytes());
        want.extend_from_slice(&1u32.to_be_bytes());
        want.extend_from_slice(&3u32.to_be_bytes());
        want.extend_from_slice(b"a.b");
        want.extend_from_slice(&2u32.to_be_bytes());
        want.extend_from_slice(&7u64.to_be_bytes());
        assert_eq!(
            g.encode(9),
            want,
            "format 1 is stable: stored groups must stay readable"
        );
    }

    #[test]
    fn share_group_rejects_unknown_format_truncation_and_trailing_bytes() {
        let g = SavedShareGroup {
            cursors: vec![("t".into(), 0, 42), ("u".into(), 3, 1)],
        };
        let v = g.encode(5);
        let mut other = v.clone();
        other[0] = 2;
        assert_eq!(SavedShareGroup::decode(&other), None, "unknown format");
        for cut in 0..v.len() {
            assert_eq!(
                SavedShareGroup::decode(&v[..cut]),
                None,
                "truncated at {cut}"
            );
        }
        let mut long = v.clone();
        long.push(0);
        assert_eq!(SavedShareGroup::decode(&long), None, "trailing byte");
        assert_eq!(SavedShareGroup::decode(&v), Some((g, 5)));
    }

    fn will() -> StoredWill {
        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(120),
            content_type: Some("text/plain".into()),
            response_topic: Some("status/reply".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\xffid")),
            user_properties: vec![("site".into(), "a".into()), ("site".into(), "b".into())],
            ..Default::default()
        };
        StoredWill {
            due: WillDue::At(1_795_000_000_123),
            message: Message {
                topic: "status/dev-7".into(),
                payload: Bytes::from_static(b"offline"),
                qos: QoS::ExactlyOnce,
                retain: true,
                props: Some(props),
                timestamp_ms: 1_795_000_000_000,
            },
        }
    }

    #[test]
    fn will_round_trip_keeps_due_time_message_and_properties() {
        let w = will();
        assert_eq!(StoredWill::decode(&w.encode().expect("encode")), Ok(w));
        let armed = StoredWill {
            due: WillDue::Armed {
                wait_ms: 30_000,
                conn: 77,
            },
            ..will()
        };
        assert_eq!(
            StoredWill::decode(&armed.encode().expect("encode")),
            Ok(armed)
        );
        let plain = StoredWill {
            due: WillDue::At(0),
            message: Message {
                props: None,
                qos: QoS::AtMostOnce,
                retain: false,
                payload: Bytes::new(),
                ..will().message
            },
        };
        assert_eq!(
            StoredWill::decode(&plain.encode().expect("encode")),
            Ok(plain)
        );
    }

    #[test]
    fn will_bad_bytes_are_errors() {
        let v = will().encode().expect("encode");
        assert_eq!(v[0], 1, "format 1");
        assert_eq!(v[1..9], 1_795_000_000_123u64.to_be_bytes());
        let mut other = v.clone();
        other[0] = 3;
        assert_eq!(StoredWill::decode(&other), Err(WillError::Format(3)));
        let armed = StoredWill {
            due: WillDue::Armed {
                wait_ms: 1,
                conn: 2,
            },
            ..will()
        }
        .encode()
        .expect("encode");
        assert_eq!(armed[0], 2, "format 2");
        for cut in 0..17 {
            assert_eq!(StoredWill::decode(&armed[..cut]), Err(WillError::Truncated));
        }
        for cut in 0..9 {
            assert_eq!(StoredWill::decode(&v[..cut]), Err(WillError::Truncated));
        }
        for cut in 9..v.len() {
            assert!(StoredWill::decode(&v[..cut]).is_err(), "truncated at {cut}");
        }
        let mut long = v.clone();
        long.push(0);
        assert_eq!(StoredWill::decode(&long), Err(WillError::Trailing));
        assert!(StoredWill::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad]).is_err());
    }

    proptest! {
        #[test]
        fn will_decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = StoredWill::decode(&b);
        }
    }

    #[test]
    fn retained_round_trip() {
        let m = Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: true,
            props: None,
            timestamp_ms: 9,
        };
        let v = encode_retained(&m).expect("encode");
        assert_eq!(decode_retained(&v), Some(m));
    }
}
