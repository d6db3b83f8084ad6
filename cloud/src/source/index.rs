//! A partition's index: which object holds which offsets (no I/O).
//!
//! Objects are indexed in the order they were found (key order within one listing); each
//! takes the offsets after the previous one's. An entry is stored once, under
//! `b'3' | topic | partition | first offset` (`storage::keys`), and never changes, so an
//! offset names the same record for the life of the topic.

use std::sync::Arc;

/// One indexed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// First offset of its records.
    pub first: u64,
    /// Records it holds (0: an empty object, kept so it is not indexed again).
    pub count: u32,
    /// Size when indexed.
    pub size: u64,
    /// Last-Modified in milliseconds: every record's timestamp.
    pub modified_ms: i64,
    /// Object key.
    pub key: Arc<str>,
}

impl Entry {
    pub fn end(&self) -> u64 {
        self.first + u64::from(self.count)
    }

    /// Stored value: `count u32 | size u64 | modified i64 | key` (the first offset is in
    /// the storage key).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(20 + self.key.len());
        v.extend_from_slice(&self.count.to_be_bytes());
        v.extend_from_slice(&self.size.to_be_bytes());
        v.extend_from_slice(&self.modified_ms.to_be_bytes());
        v.extend_from_slice(self.key.as_bytes());
        v
    }

    pub fn decode(first: u64, v: &[u8]) -> Option<Entry> {
        let count = u32::from_be_bytes(v.get(0..4)?.try_into().ok()?);
        let size = u64::from_be_bytes(v.get(4..12)?.try_into().ok()?);
        let modified_ms = i64::from_be_bytes(v.get(12..20)?.try_into().ok()?);
        let key = std::str::from_utf8(v.get(20..)?).ok()?;
        Some(Entry {
            first,
            count,
            size,
            modified_ms,
            key: Arc::from(key),
        })
    }
}

/// The entries of one partition, in offset order.
#[derive(Debug, Default)]
pub struct PartIndex {
    entries: Vec<Entry>,
}

impl PartIndex {
    /// The offset after the last indexed record (the high watermark).
    pub fn end(&self) -> u64 {
        self.entries.last().map_or(0, Entry::end)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&Entry> {
        self.entries.get(i)
    }

    /// Appends an entry; it must start at [`PartIndex::end`].
    pub fn push(&mut self, e: Entry) {
        debug_assert_eq!(e.first, self.end());
        self.entries.push(e);
    }

    /// The entry holding `offset`, or the first one after it (offsets of empty objects
    /// hold nothing); `None` at or past the end.
    pub fn find(&self, offset: u64) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.end() <= offset);
        (i < self.entries.len()).then_some(i)
    }

    /// The first offset of an object modified at or after `ts_ms` (ListOffsets by
    /// time), with that timestamp; with `None`, of the latest-modified object.
    pub fn offset_for_time(&self, ts_ms: Option<i64>) -> Option<(u64, i64)> {
        let mut with_records = self.entries.iter().filter(|e| e.count > 0);
        let e = match ts_ms {
            Some(ts) => with_records.find(|e| e.modified_ms >= ts),
            None => with_records.max_by_key(|e| e.modified_ms),
        }?;
        Some((e.first, e.modified_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: u64, count: u32, key: &str) -> Entry {
        Entry {
            first,
            count,
            size: 10,
            modified_ms: first as i64,
            key: Arc::from(key),
        }
    }

    #[test]
    fn find_skips_empty_objects_and_stops_at_the_end() {
        let mut ix = PartIndex::default();
        ix.push(entry(0, 3, "a"));
        ix.push(entry(3, 0, "b"));
        ix.push(entry(3, 2, "c"));
        assert_eq!(ix.end(), 5);
        assert_eq!(ix.find(0), Some(0));
        assert_eq!(ix.find(2), Some(0));
        assert_eq!(ix.find(3), Some(2), "the empty object holds no offset");
        assert_eq!(ix.find(4), Some(2));
        assert_eq!(ix.find(5), None);
        assert_eq!(ix.offset_for_time(Some(1)), Some((3, 3)));
        assert_eq!(ix.offset_for_time(Some(4)), None);
        assert_eq!(ix.offset_for_time(None), Some((3, 3)));
    }

    #[test]
    fn entries_round_trip() {
        let e = entry(42, 7, "data/x é.bin");
        assert_eq!(Entry::decode(42, &e.encode()), Some(e));
        assert_eq!(Entry::decode(0, b"short"), None);
    }
}
