//! A tiered partition's uploaded segments (no I/O): which object holds which offsets.
//!
//! A segment is stored once under `b'4' | topic | partition | base offset`
//! (`storage::keys`) and never changes; segments are contiguous (each ends where the next
//! begins) and end where the partition's local batches begin.

use std::sync::Arc;

/// One uploaded segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// First offset of its first batch.
    pub base: u64,
    /// The offset after its last record.
    pub end: u64,
    /// Bytes.
    pub size: u64,
    /// Largest record timestamp in it (ListOffsets by time).
    pub max_ts: i64,
    /// Object key.
    pub key: Arc<str>,
}

impl Segment {
    /// Stored value: `end u64 | size u64 | max_ts i64 | key`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + self.key.len());
        v.extend_from_slice(&self.end.to_be_bytes());
        v.extend_from_slice(&self.size.to_be_bytes());
        v.extend_from_slice(&self.max_ts.to_be_bytes());
        v.extend_from_slice(self.key.as_bytes());
        v
    }

    pub fn decode(base: u64, v: &[u8]) -> Option<Segment> {
        let end = u64::from_be_bytes(v.get(0..8)?.try_into().ok()?);
        let size = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
        let max_ts = i64::from_be_bytes(v.get(16..24)?.try_into().ok()?);
        let key = std::str::from_utf8(v.get(24..)?).ok()?;
        Some(Segment {
            base,
            end,
            size,
            max_ts,
            key: Arc::from(key),
        })
    }
}

/// The segment holding `offset` (or the first after it), by index.
pub fn find(segments: &[Segment], offset: u64) -> Option<usize> {
    let i = segments.partition_point(|s| s.end <= offset);
    (i < segments.len()).then_some(i)
}

/// The base of the first segment with a record at or after `ts_ms`.
pub fn offset_for_time(segments: &[Segment], ts_ms: i64) -> Option<u64> {
    segments.iter().find(|s| s.max_ts >= ts_ms).map(|s| s.base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: u64, end: u64, max_ts: i64) -> Segment {
        Segment {
            base,
            end,
            size: 100,
            max_ts,
            key: Arc::from(format!("p/t-1/0/{base:020}.log").as_str()),
        }
    }

    #[test]
    fn segments_round_trip_and_are_found_by_offset_and_time() {
        let s = seg(10, 20, 5);
        assert_eq!(Segment::decode(10, &s.encode()), Some(s));
        assert_eq!(Segment::decode(0, b"short"), None);
        let v = vec![seg(0, 10, 5), seg(10, 20, 9), seg(20, 25, 7)];
        assert_eq!(find(&v, 0), Some(0));
        assert_eq!(find(&v, 10), Some(1));
        assert_eq!(find(&v, 24), Some(2));
        assert_eq!(find(&v, 25), None);
        assert_eq!(offset_for_time(&v, 6), Some(10));
        assert_eq!(offset_for_time(&v, 10), None);
    }
}
