//! Key layout of the one RocksDB instance. Every key is fixed-width big-endian where it
//! is numeric, so byte order equals numeric order and range scans/deletes are exact.
//!
//! Column family `log`:
//!   `topic_id u32 | partition u32 | base_offset u64`  -> one stored batch (opaque bytes)
//! Column family `meta`:
//!   `b'T' | topic name`                               -> [`super::TopicRecord`] encoding
//!   `b'P' | topic_id u32 | partition u32 | pid i64`   -> producer state (opaque bytes)
//!   `b'O' | len u16 | group | len u16 | topic | partition u32` -> committed offset
//!   `b'C' | counter name`                             -> u64 counter (ids)
//!   `b'R' | topic name`                               -> retained message (opaque bytes)
//!   `b'S' | client id`                                -> persistent session (opaque bytes)
//!   `b'A' | log topic name`                           -> original name of a hashed topic
//!   `b'G' | share subscription ($share/<group>/<filter>)` -> share group positions (opaque)
//!   `b'W' | client id`                                -> pending delayed will (opaque bytes)
//!   `b'M' | topic_id u32 | partition u32`             -> memory partition's offset floor (u64)
//!   `b'L' | topic_id u32 | partition u32`             -> log start set by DeleteRecords (u64)
//!   `b'3' | topic_id u32 | partition u32 | first offset u64` -> an S3 source's index entry
//!                                                        (opaque bytes, `crate::source`)
//!   `b'4' | topic_id u32 | partition u32 | base offset u64` -> a tiered partition's
//!                                                        uploaded segment (`crate::tier`)

pub(crate) const LOG_KEY_LEN: usize = 16;

pub(crate) fn log_key(topic_id: u32, partition: u32, offset: u64) -> [u8; LOG_KEY_LEN] {
    let mut k = [0u8; LOG_KEY_LEN];
    k[0..4].copy_from_slice(&topic_id.to_be_bytes());
    k[4..8].copy_from_slice(&partition.to_be_bytes());
    k[8..16].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Decodes a log key into `(topic_id, partition, base_offset)`.
pub(crate) fn parse_log_key(k: &[u8]) -> Option<(u32, u32, u64)> {
    if k.len() != LOG_KEY_LEN {
        return None;
    }
    let t = u32::from_be_bytes(k[0..4].try_into().ok()?);
    let p = u32::from_be_bytes(k[4..8].try_into().ok()?);
    let o = u64::from_be_bytes(k[8..16].try_into().ok()?);
    Some((t, p, o))
}

pub(crate) fn topic_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'T');
    k.extend_from_slice(name.as_bytes());
    k
}

/// `tag | topic_id | partition`, with room for an 8-byte suffix.
fn partition_key(tag: u8, topic_id: u32, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag);
    k.extend_from_slice(&topic_id.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

pub(crate) fn producer_prefix(topic_id: u32, partition: u32) -> Vec<u8> {
    partition_key(b'P', topic_id, partition)
}

pub(crate) fn producer_key(topic_id: u32, partition: u32, producer_id: i64) -> Vec<u8> {
    let mut k = producer_prefix(topic_id, partition);
    k.extend_from_slice(&producer_id.to_be_bytes());
    k
}

pub(crate) fn producer_topic_range(topic_id: u32) -> (Vec<u8>, Vec<u8>) {
    topic_range(b'P', topic_id)
}

/// Key of a memory partition's offset floor: no offset at or above it was handed out.
pub(crate) fn mem_floor_key(topic_id: u32, partition: u32) -> Vec<u8> {
    partition_key(b'M', topic_id, partition)
}

pub(crate) fn mem_floor_topic_range(topic_id: u32) -> (Vec<u8>, Vec<u8>) {
    topic_range(b'M', topic_id)
}

/// Key of a partition's log start as DeleteRecords set it (it may fall inside a batch).
pub(crate) fn log_start_key(topic_id: u32, partition: u32) -> Vec<u8> {
    partition_key(b'L', topic_id, partition)
}

pub(crate) fn log_start_topic_range(topic_id: u32) -> (Vec<u8>, Vec<u8>) {
    topic_range(b'L', topic_id)
}

/// Key of an S3-backed topic's index entry (an object and the offsets it holds).
pub(crate) fn source_key(topic_id: u32, partition: u32, first: u64) -> Vec<u8> {
    let mut k = partition_key(b'3', topic_id, partition);
    k.extend_from_slice(&first.to_be_bytes());
    k
}

pub(crate) fn source_topic_range(topic_id: u32) -> (Vec<u8>, Vec<u8>) {
    topic_range(b'3', topic_id)
}

/// Decodes a source index key into `(topic_id, partition, first offset)`.
pub(crate) fn parse_source_key(k: &[u8]) -> Option<(u32, u32, u64)> {
    parse_partition_offset_key(b'3', k)
}

/// Key of a tiered partition's uploaded segment.
pub(crate) fn tier_key(topic_id: u32, partition: u32, base: u64) -> Vec<u8> {
    let mut k = partition_key(b'4', topic_id, partition);
    k.extend_from_slice(&base.to_be_bytes());
    k
}

pub(crate) fn tier_topic_range(topic_id: u32) -> (Vec<u8>, Vec<u8>) {
    topic_range(b'4', topic_id)
}

pub(crate) fn parse_tier_key(k: &[u8]) -> Option<(u32, u32, u64)> {
    parse_partition_offset_key(b'4', k)
}

/// A decoder of `tag | topic_id | partition | offset` keys into `(topic, partition, offset)`.
pub(crate) type ParsePartitionOffset = fn(&[u8]) -> Option<(u32, u32, u64)>;

/// Decodes `tag | topic_id u32 | partition u32 | offset u64`.
fn parse_partition_offset_key(tag: u8, k: &[u8]) -> Option<(u32, u32, u64)> {
    if k.len() != 17 || k[0] != tag {
        return None;
    }
    let t = u32::from_be_bytes(k[1..5].try_into().ok()?);
    let p = u32::from_be_bytes(k[5..9].try_into().ok()?);
    let o = u64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((t, p, o))
}

/// `[tag | topic_id, tag | topic_id + 1)`: every key of one topic under `tag`.
fn topic_range(tag: u8, topic_id: u32) -> (Vec<u8>, Vec<u8>) {
    let mut a = vec![tag];
    a.extend_from_slice(&topic_id.to_be_bytes());
    let mut b = vec![tag];
    b.extend_from_slice(&(topic_id as u64 + 1).to_be_bytes()[4..8]);
    if topic_id == u32::MAX {
        b = vec![tag + 1];
    }
    (a, b)
}

fn put_str16(k: &mut Vec<u8>, s: &str) {
    let len = s.len().min(u16::MAX as usize);
    k.extend_from_slice(&(len as u16).to_be_bytes());
    k.extend_from_slice(&s.as_bytes()[..len]);
}

pub(crate) fn offsets_group_prefix(group: &str) -> Vec<u8> {
    let mut k = vec![b'O'];
    put_str16(&mut k, group);
    k
}

pub(crate) fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = offsets_group_prefix(group);
    put_str16(&mut k, topic);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Decodes an offset key into `(group, topic, partition)`.
pub(crate) fn parse_offset_key(k: &[u8]) -> Option<(String, String, u32)> {
    fn take_str(k: &[u8], at: usize) -> Option<(String, usize)> {
        let len = u16::from_be_bytes(k.get(at..at + 2)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(k.get(at + 2..at + 2 + len)?).ok()?;
        Some((s.to_string(), at + 2 + len))
    }
    if k.first() != Some(&b'O') {
        return None;
    }
    let (group, at) = take_str(k, 1)?;
    let (topic, at) = take_str(k, at)?;
    let p = u32::from_be_bytes(k.get(at..at + 4)?.try_into().ok()?);
    if at + 4 != k.len() {
        return None;
    }
    Some((group, topic, p))
}

pub(crate) fn counter_key(name: &str) -> Vec<u8> {
    let mut k = vec![b'C'];
    k.extend_from_slice(name.as_bytes());
    k
}

/// Prefixes of the named-value families (retained messages, sessions, topic aliases,
/// share groups, delayed wills).
pub(crate) const RETAINED: u8 = b'R';
pub(crate) const SESSION: u8 = b'S';
pub(crate) const TOPIC_ALIAS: u8 = b'A';
pub(crate) const SHARE_GROUP: u8 = b'G';
pub(crate) const WILL: u8 = b'W';

pub(crate) fn named_key(prefix: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(prefix);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The smallest key strictly greater than every key starting with `prefix`.
///
/// `prefix` must have a byte below 0xFF: every prefix here starts with its key space's tag
/// byte. (Keys starting with only 0xFF bytes have no finite upper bound.)
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    debug_assert!(
        prefix.iter().any(|&b| b < 0xff),
        "no key bounds an all-0xFF prefix"
    );
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn log_key_round_trip_and_order(t in any::<u32>(), p in any::<u32>(), o in any::<u64>(),
                                        t2 in any::<u32>(), p2 in any::<u32>(), o2 in any::<u64>()) {
            let k = log_key(t, p, o);
            prop_assert_eq!(parse_log_key(&k), Some((t, p, o)));
            let k2 = log_key(t2, p2, o2);
            prop_assert_eq!(k.cmp(&k2), (t, p, o).cmp(&(t2, p2, o2)));
        }

        #[test]
        fn offset_key_round_trip(g in ".{0,40}", t in "[a-zA-Z0-9._-]{1,60}", p in any::<u32>()) {
            let k = offset_key(&g, &t, p);
            prop_assert!(k.starts_with(&offsets_group_prefix(&g)));
            prop_assert_eq!(parse_offset_key(&k), Some((g.clone(), t.clone(), p)));
        }

        #[test]
        fn group_prefixes_do_not_overlap(a in "[a-z]{0,8}", b in "[a-z]{0,8}", t in "[a-z]{1,8}") {
            prop_assume!(a != b);
            let k = offset_key(&a, &t, 0);
            prop_assert!(!k.starts_with(&offsets_group_prefix(&b)));
        }

        #[test]
        fn producer_range_covers_exactly_one_topic(t in 0u32..u32::MAX, p in any::<u32>(), pid in any::<i64>()) {
            let (a, b) = producer_topic_range(t);
            let k = producer_key(t, p, pid);
            prop_assert!(k.as_slice() >= a.as_slice() && k.as_slice() < b.as_slice());
            let other = producer_key(t + 1, p, pid);
            prop_assert!(other.as_slice() >= b.as_slice());
        }

        #[test]
        fn prefix_end_bounds_prefix(tag in 0u8..0xff, rest in proptest::collection::vec(any::<u8>(), 0..6), tail in proptest::collection::vec(any::<u8>(), 0..6)) {
            // Real prefixes start with a tag byte (below 0xFF); the rest may be anything,
            // 0xFF runs included.
            let mut prefix = vec![tag];
            prefix.extend_from_slice(&rest);
            let end = prefix_end(&prefix);
            prop_assert!(prefix < end);
            let mut k = prefix.clone();
            k.extend_from_slice(&tail);
            prop_assert!(k < end);
        }
    }
}
