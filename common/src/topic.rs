//! The MQTT <-> Kafka topic-name mapping (design brief, section 3 "Topic names").
//!
//! Kafka topic names allow only `[a-zA-Z0-9._-]` and at most 249 characters (and not `.`
//! or `..`); MQTT topic names are UTF-8 strings of up to 65,535 bytes with `/` separating
//! levels. The mapping is a function of the MQTT name alone, so every edge and the cloud
//! compute the same Kafka name without coordination.
//!
//! # Readable form (the common case)
//!
//! The MQTT name is encoded byte by byte:
//!
//! | MQTT byte                          | Kafka output                 |
//! |------------------------------------|------------------------------|
//! | `/`                                | `.`                          |
//! | `A-Z a-z 0-9 -`                    | itself                       |
//! | `_`                                | `__` (but `_5F` as the very first byte, so no output starts with `__`, Kafka's internal prefix) |
//! | anything else (`.`, space, `$`, `+`, any non-ASCII UTF-8 byte) | `_` + two upper-case hex digits, e.g. `.` -> `_2E`, `ü` -> `_C3_BC` |
//!
//! So `factory/line1/cam7` <-> `factory.line1.cam7`, `site_a/temp` <-> `site__a.temp`,
//! `$SYS/uptime` <-> `_24SYS.uptime`. The two MQTT names whose readable form would be the
//! illegal Kafka names `.` and `..` (`/` and `//`) encode `/` as `_2F` instead.
//!
//! Decoding reverses the table (`.` -> `/`, `__` -> `_`, `_XY` -> byte 0xXY). It is strict:
//! a Kafka name the encoder would never produce (e.g. `a_b`, `_61`) is not an MQTT mapping,
//! so the mapping is a bijection between MQTT names and the readable Kafka names.
//!
//! # Hashed form (names that do not fit)
//!
//! When the readable form is longer than 249 characters the Kafka name is
//! `<readable prefix>_h<sha256 of the MQTT name, 64 lower-case hex digits>`, the prefix
//! being the readable form cut at an escape boundary so the whole name is at most 249
//! characters. Read escape unit by escape unit (`.`, `__`, `_XY`, plain byte), a readable
//! form never contains the unit `_h` (after a unit-starting `_` the encoder writes only `_`
//! or an upper-case hex digit; the `_h` inside `a__h` is not a unit), so hashed and
//! readable names never collide, and two hashed names collide only if SHA-256 does. A hashed name is not decodable from itself: the
//! original MQTT name travels in the `mqtt.topic` header of every record
//! ([`crate::headers::MQTT_TOPIC`]), and a broker that wants the alias in its metadata
//! stores that header's value beside the topic on first use.
//!
//! The mapping is collision free: `decode(encode(t)) == t` for every readable name, hashed
//! names are disjoint from readable ones, and every output is a legal Kafka topic name
//! (property-tested below).

use sha2::{Digest, Sha256};

/// Kafka's limit on topic-name length.
pub const KAFKA_MAX_TOPIC_LEN: usize = 249;
/// MQTT's limit on topic-name length (bytes).
pub const MQTT_MAX_TOPIC_LEN: usize = 65_535;
/// Marker that introduces the SHA-256 digest in a hashed name.
pub const HASH_MARKER: &str = "_h";
const HASH_HEX_LEN: usize = 64;

/// Errors of the mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The MQTT topic name is empty or longer than 65,535 bytes.
    #[error("invalid mqtt topic name: {0}")]
    InvalidMqtt(&'static str),
    /// The Kafka name is not the output of [`mqtt_to_kafka`] for any MQTT name.
    #[error("kafka topic {name:?} is not a mapped mqtt name: {reason}")]
    NotMapped {
        /// The offending Kafka name.
        name: String,
        /// Why it does not decode.
        reason: &'static str,
    },
}

/// What a Kafka topic name decodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A readable name: this is the MQTT topic name.
    Topic(String),
    /// A hashed name: the MQTT name is in each record's `mqtt.topic` header.
    Hashed {
        /// The readable (truncated) prefix before the digest.
        prefix: String,
    },
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escape(out: &mut String, b: u8) {
    out.push('_');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xF)] as char);
}

fn readable(mqtt: &str) -> String {
    let only_slashes = !mqtt.is_empty() && mqtt.len() <= 2 && mqtt.bytes().all(|b| b == b'/');
    let mut out = String::with_capacity(mqtt.len() + 8);
    for (i, b) in mqtt.bytes().enumerate() {
        match b {
            b'/' if !only_slashes => out.push('.'),
            b'_' if i > 0 => out.push_str("__"),
            b if is_plain(b) => out.push(b as char),
            b => push_escape(&mut out, b),
        }
    }
    out
}

/// Maps an MQTT topic name to its Kafka topic name (readable or hashed form).
pub fn mqtt_to_kafka(mqtt: &str) -> Result<String, Error> {
    if mqtt.is_empty() {
        return Err(Error::InvalidMqtt("empty"));
    }
    if mqtt.len() > MQTT_MAX_TOPIC_LEN {
        return Err(Error::InvalidMqtt("longer than 65535 bytes"));
    }
    let name = readable(mqtt);
    if name.len() <= KAFKA_MAX_TOPIC_LEN {
        return Ok(name);
    }
    let budget = KAFKA_MAX_TOPIC_LEN - HASH_MARKER.len() - HASH_HEX_LEN;
    let mut cut = 0;
    let bytes = name.as_bytes();
    // Walk escape units so the prefix never ends inside `_XY` or `__`.
    while cut < bytes.len() {
        let unit = if bytes[cut] == b'_' {
            if bytes.get(cut + 1) == Some(&b'_') {
                2
            } else {
                3
            }
        } else {
            1
        };
        if cut + unit > budget {
            break;
        }
        cut += unit;
    }
    let digest = Sha256::digest(mqtt.as_bytes());
    let mut out = String::with_capacity(KAFKA_MAX_TOPIC_LEN);
    out.push_str(&name[..cut]);
    out.push_str(HASH_MARKER);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn not_mapped(name: &str, reason: &'static str) -> Error {
    Error::NotMapped {
        name: name.to_owned(),
        reason,
    }
}

/// Decodes a Kafka topic name produced by [`mqtt_to_kafka`].
pub fn kafka_to_mqtt(kafka: &str) -> Result<Decoded, Error> {
    if !is_legal_kafka_name(kafka) {
        return Err(not_mapped(kafka, "not a legal kafka topic name"));
    }
    match scan(kafka) {
        Scan::Bad => Err(not_mapped(kafka, "bad escape")),
        Scan::Hashed(pos) => {
            let digest = &kafka[pos + HASH_MARKER.len()..];
            let ok = digest.len() == HASH_HEX_LEN
                && digest
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !ok {
                return Err(not_mapped(kafka, "malformed hashed name"));
            }
            Ok(Decoded::Hashed {
                prefix: kafka[..pos].to_owned(),
            })
        }
        Scan::Readable(bytes) => {
            let topic = String::from_utf8(bytes).map_err(|_| not_mapped(kafka, "not utf-8"))?;
            if mqtt_to_kafka(&topic).as_deref() != Ok(kafka) {
                return Err(not_mapped(kafka, "not the canonical encoding"));
            }
            Ok(Decoded::Topic(topic))
        }
    }
}

enum Scan {
    Readable(Vec<u8>),
    /// Byte position of the `_h` unit.
    Hashed(usize),
    Bad,
}

/// Walks the name escape unit by escape unit (`.`, `__`, `_XY`, `_h`, plain byte).
fn scan(s: &str) -> Scan {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                out.push(b'/');
                i += 1;
            }
            b'_' => match b.get(i + 1) {
                Some(b'_') => {
                    out.push(b'_');
                    i += 2;
                }
                Some(b'h') => return Scan::Hashed(i),
                _ => {
                    let (Some(hi), Some(lo)) = (
                        b.get(i + 1).and_then(|c| hex_val(*c)),
                        b.get(i + 2).and_then(|c| hex_val(*c)),
                    ) else {
                        return Scan::Bad;
                    };
                    out.push(hi << 4 | lo);
                    i += 3;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Scan::Readable(out)
}

/// Whether `name` is a legal Kafka topic name.
pub fn is_legal_kafka_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= KAFKA_MAX_TOPIC_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn readable_examples() {
        let cases = [
            ("factory/line1/cam7", "factory.line1.cam7"),
            ("site_a/temp", "site__a.temp"),
            ("_private", "_5Fprivate"),
            ("$SYS/uptime", "_24SYS.uptime"),
            ("a.b", "a_2Eb"),
            ("/", "_2F"),
            ("//", "_2F_2F"),
            ("///", "..."),
            ("/a", ".a"),
            ("temp ü", "temp_20_C3_BC"),
            ("a_h", "a__h"),
        ];
        for (mqtt, kafka) in cases {
            assert_eq!(mqtt_to_kafka(mqtt).unwrap(), kafka, "{mqtt}");
            assert_eq!(
                kafka_to_mqtt(kafka).unwrap(),
                Decoded::Topic(mqtt.into()),
                "{kafka}"
            );
        }
    }

    #[test]
    fn non_canonical_names_are_rejected() {
        for name in ["a_b", "_61", "__consumer_offsets", "a_2e", "x_h00", "."] {
            assert!(kafka_to_mqtt(name).is_err(), "{name}");
        }
    }

    #[test]
    fn long_names_hash() {
        let long = "a/".repeat(200);
        let k = mqtt_to_kafka(&long).unwrap();
        assert_eq!(k.len(), KAFKA_MAX_TOPIC_LEN);
        assert!(is_legal_kafka_name(&k));
        assert!(matches!(kafka_to_mqtt(&k), Ok(Decoded::Hashed { .. })));
        let other = format!("{long}b");
        assert_ne!(mqtt_to_kafka(&other).unwrap(), k);
        assert!(mqtt_to_kafka("").is_err());
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9/_.$ -]{1,40}",
            "[a-z/_]{100,300}",
            any::<String>().prop_filter("non-empty", |s| !s.is_empty()),
            "[ü€/_.]{60,130}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn round_trip_and_legal(t in topic_strategy()) {
            let k = mqtt_to_kafka(&t).unwrap();
            prop_assert!(is_legal_kafka_name(&k), "{k}");
            prop_assert!(!k.starts_with("__"));
            match kafka_to_mqtt(&k).unwrap() {
                Decoded::Topic(back) => prop_assert_eq!(back, t),
                Decoded::Hashed { prefix } => {
                    prop_assert!(readable(&t).len() > KAFKA_MAX_TOPIC_LEN);
                    prop_assert!(readable(&t).starts_with(&prefix));
                }
            }
        }

        #[test]
        fn collision_free(a in topic_strategy(), b in topic_strategy()) {
            prop_assume!(a != b);
            prop_assert_ne!(mqtt_to_kafka(&a).unwrap(), mqtt_to_kafka(&b).unwrap());
        }

        #[test]
        fn decode_never_panics_and_is_canonical(k in "[a-zA-Z0-9._-]{1,60}") {
            if let Ok(Decoded::Topic(t)) = kafka_to_mqtt(&k) {
                prop_assert_eq!(mqtt_to_kafka(&t).unwrap(), k);
            }
        }
    }
}

/// Whether an MQTT topic name matches a topic filter (MQTT 3.1.1 section 4.7, MQTT 5
/// section 4.7): `+` matches one level, `#` the rest (including the parent level), and
/// topics starting with `$` are not matched by a filter starting with a wildcard. Shared
/// by the edge (uplink filters) and the cloud (subscriptions) so both agree exactly.
pub fn matches(filter: &str, topic: &str) -> bool {
    // What the level walk below answers for equal strings, without splitting them (most
    // subscriptions name one topic; this runs per delivered message).
    if filter == topic {
        return true;
    }
    if topic.starts_with('$') && (filter.starts_with('#') || filter.starts_with('+')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod matches_tests {
    use super::matches;

    #[test]
    fn filter_rules() {
        assert!(matches("#", "a/b"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/b", "a"));
        assert!(matches("a/b", "a/b"));
        assert!(matches("$SYS/x", "$SYS/x"));
        assert!(!matches("a/b", "a/b/"));
    }
}
