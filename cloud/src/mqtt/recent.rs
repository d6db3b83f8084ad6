//! The messages most recently published over MQTT to one partition, kept decoded in
//! memory while an MQTT cursor follows that partition.
//!
//! Delivery reads the log (the one copy of the data). But a subscriber that keeps up is
//! woken by the append of a message the publisher's task had in hand a moment ago:
//! reading it back from RocksDB (an iterator, a seek) and decoding the record batch again
//! for each subscriber is most of a delivery's cost. So `Hub::append_topic` also puts the
//! appended messages here, by offset, and a cursor whose next offset is here takes them
//! instead of reading the store. Whatever is not here (records produced over Kafka, a
//! subscriber that fell behind, a cursor opened on an old position) is read from the
//! store as before, so this cache only changes cost, never what is delivered: an entry is
//! added under the offset the log assigned, and holds what the stored record decodes to
//! (the `records::tests::to_record_then_decode_gives_the_message_back` test holds that).
//!
//! Early delivery (`mqtt.deliver_before_sync`, on by default): an entry is added as soon
//! as its append has its offsets and is queued for the writer, before the fsync the
//! publisher's PUBACK waits for, and a cursor may take entries above the high watermark
//! whose QoS is 0 or 1 ([`Entry::early`]). A subscriber then receives a message about one
//! fsync sooner, as from a broker that acknowledges from memory (a share group's
//! dispatcher takes them the same way); Kafka readers, QoS 2 messages and every read of
//! the store still stop at the high watermark.
//! What this gives up, only if the cloud stops before the fsync (a crash or power cut)
//! or the write fails: a subscriber may have received a message the log does not keep
//! (its publisher had no acknowledgement and sends it again, so a QoS 1 subscriber sees
//! it twice, as QoS 1 allows). Positions a session stores never pass the high watermark
//! (`Cursors::committed`, `ShareGroup::committed`), so a message appended again after a restart, under an offset
//! a subscriber was shown before, still reaches a persistent session; a failed write
//! removes its entries here ([`Recent::forget_from`]) and its offsets are never reused.
//! Without early delivery an entry is added once its append is durable.
//!
//! Bounds: nothing is kept for a partition no cursor follows; otherwise the newest
//! [`MAX_ENTRIES`] messages and at most [`MAX_BYTES`] payload bytes.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;

use super::records::Message;
use crate::log::partition::PartitionLog;

/// Entries kept per followed partition.
pub(crate) const MAX_ENTRIES: usize = 512;
/// Payload bytes kept per followed partition.
pub(crate) const MAX_BYTES: usize = 1 << 20;

/// One message at its offset, with the record key (the publisher's client id).
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) offset: u64,
    pub(crate) key: Option<Bytes>,
    pub(crate) message: Arc<Message>,
}

impl Entry {
    /// Whether a cursor may deliver this entry before the high watermark passes it (see
    /// the module docs): QoS 0 and 1 only. A QoS 2 delivery promises exactly once, which
    /// a message the log then loses and its publisher sends again would break.
    pub(crate) fn early(&self) -> bool {
        self.message.qos != QoS::ExactlyOnce
    }
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
}

#[derive(Default)]
pub(crate) struct Recent {
    /// Cursors following this partition (see [`Watch`]).
    watchers: AtomicUsize,
    /// The offset after the newest kept entry (0: none), written under the ring's lock:
    /// a cursor that has taken everything kept learns so without the lock.
    end: AtomicU64,
    ring: Mutex<Ring>,
}

/// Held by a cursor: while any exists, appends to the partition are kept.
pub(crate) struct Watch(Arc<Recent>);

impl Drop for Watch {
    fn drop(&mut self) {
        if self.0.watchers.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut r = self.0.lock();
            r.entries.clear();
            r.bytes = 0;
            self.0.end.store(0, Ordering::Release);
        }
    }
}

impl Watch {
    pub(crate) fn recent(&self) -> &Recent {
        &self.0
    }
}

impl Recent {
    /// The cache of `part` (created on first use, in the partition's view slot), for a
    /// cursor about to follow it.
    pub(crate) fn of(part: &PartitionLog) -> Arc<Recent> {
        let any = part
            .view_cache
            .get_or_init(|| Arc::new(Recent::default()) as Arc<dyn Any + Send + Sync>);
        // The slot only ever holds a `Recent` (this module is its one user).
        any.clone().downcast::<Recent>().unwrap_or_default()
    }

    /// The cache of `part` if a cursor ever followed it: appends to partitions nobody
    /// follows allocate nothing (a million topics may be published to over MQTT).
    pub(crate) fn existing(part: &PartitionLog) -> Option<Arc<Recent>> {
        part.view_cache.get()?.clone().downcast::<Recent>().ok()
    }

    /// Starts keeping this partition's appends until the returned guard drops.
    pub(crate) fn watch(self: Arc<Self>) -> Watch {
        self.watchers.fetch_add(1, Ordering::AcqRel);
        Watch(self)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `msgs`, appended at offsets `base..` with record key `key`. Returns
    /// whether a cursor follows the partition.
    pub(crate) fn push(&self, base: u64, key: &Bytes, msgs: &[Arc<Message>]) -> bool {
        if self.watchers.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut r = self.lock();
        match r.entries.back() {
            // Appends of one partition can finish out of offset order (two publishers'
            // tasks); a late one is not kept: the cursor reads it from the store.
            Some(e) if e.offset >= base => return true,
            // Entries stay consecutive: after a gap, start again from `base`.
            Some(e) if e.offset + 1 != base => {
                r.entries.clear();
                r.bytes = 0;
            }
            _ => {}
        }
        for (i, m) in msgs.iter().enumerate() {
            r.bytes += m.payload.len();
            r.entries.push_back(Entry {
                offset: base + i as u64,
                key: Some(key.clone()),
                message: m.clone(),
            });
        }
        while r.entries.len() > MAX_ENTRIES || (r.bytes > MAX_BYTES && r.entries.len() > 1) {
            if let Some(e) = r.entries.pop_front() {
                r.bytes -= e.message.payload.len();
            }
        }
        self.end.store(base + msgs.len() as u64, Ordering::Release);
        true
    }

    /// One past the last offset pushed (tests: an append has reached the window).
    #[cfg(test)]
    pub(crate) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Whether the entry at `offset` is kept and may be delivered before the high
    /// watermark passes it ([`Entry::early`]).
    pub(crate) fn early_at(&self, offset: u64) -> bool {
        if offset >= self.end.load(Ordering::Acquire) {
            return false;
        }
        let r = self.lock();
        let Some(first) = r.entries.front() else {
            return false;
        };
        offset
            .checked_sub(first.offset)
            .and_then(|i| r.entries.get(i as usize))
            .is_some_and(|e| e.offset == offset && e.early())
    }

    /// Drops the entries at and above `offset` (their write failed).
    pub(crate) fn forget_from(&self, offset: u64) {
        let mut r = self.lock();
        while r.entries.back().is_some_and(|e| e.offset >= offset) {
            if let Some(e) = r.entries.pop_back() {
                r.bytes -= e.message.payload.len();
            }
        }
        let end = r.entries.back().map_or(0, |e| e.offset + 1);
        self.end.store(end, Ordering::Release);
    }

    /// The kept entries a reader at `offset` may deliver now, at most `max`: consecutive
    /// offsets from exactly `offset`, those from `hwm` (the high watermark) on only while
    /// they may go early ([`Entry::early`]); empty when `offset` is not kept. A reader that
    /// has taken everything kept learns so without the lock.
    pub(crate) fn from(&self, offset: u64, hwm: u64, max: usize, out: &mut Vec<Entry>) {
        if offset >= self.end.load(Ordering::Acquire) {
            return;
        }
        let r = self.lock();
        let Some(first) = r.entries.front() else {
            return;
        };
        if offset < first.offset {
            return;
        }
        let start = (offset - first.offset) as usize;
        for (i, e) in r.entries.iter().skip(start).take(max).enumerate() {
            if e.offset != offset + i as u64 || (e.offset >= hwm && !e.early()) {
                break;
            }
            out.push(e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::records::Message;
    use rumqttc::v5::mqttbytes::QoS;

    fn msg(n: usize) -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::from(vec![0u8; n]),
            qos: QoS::AtLeastOnce,
            retain: false,
            props: None,
            timestamp_ms: 1,
        })
    }

    fn offsets(r: &Recent, from: u64, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        r.from(from, u64::MAX, max, &mut out);
        out.iter().map(|e| e.offset).collect()
    }

    #[test]
    fn keeps_nothing_without_a_watcher_and_forgets_when_the_last_one_leaves() {
        let r = Arc::new(Recent::default());
        let key = Bytes::from_static(b"c");
        r.push(0, &key, &[msg(1)]);
        assert!(offsets(&r, 0, 10).is_empty());
        let w = r.clone().watch();
        r.push(1, &key, &[msg(1), msg(1)]);
        assert_eq!(offsets(&r, 1, 10), vec![1, 2]);
        assert_eq!(offsets(&r, 2, 10), vec![2]);
        assert!(offsets(&r, 0, 10).is_empty(), "offset 0 was never kept");
        assert!(offsets(&r, 3, 10).is_empty());
        drop(w);
        assert!(offsets(&r, 1, 10).is_empty());
    }

    #[test]
    fn early_only_for_qos_0_and_1_and_a_failed_write_is_forgotten() {
        let r = Arc::new(Recent::default());
        let _w = r.clone().watch();
        let key = Bytes::from_static(b"c");
        let exact = Arc::new(Message {
            qos: QoS::ExactlyOnce,
            ..(*msg(1)).clone()
        });
        r.push(0, &key, &[msg(1), exact, msg(1)]);
        assert!(r.early_at(0) && !r.early_at(1) && r.early_at(2));
        assert!(!r.early_at(3), "not kept");
        r.forget_from(1);
        assert_eq!(offsets(&r, 0, 10), vec![0]);
        assert!(!r.early_at(2));
        // The ring goes on after the gap the failed write left.
        r.push(3, &key, &[msg(1)]);
        assert_eq!(offsets(&r, 3, 10), vec![3]);
    }

    #[test]
    fn bounded_by_entries_and_bytes_and_never_out_of_order() {
        let r = Arc::new(Recent::default());
        let _w = r.clone().watch();
        let key = Bytes::from_static(b"c");
        for i in 0..(MAX_ENTRIES as u64 + 10) {
            r.push(i, &key, &[msg(1)]);
        }
        assert!(offsets(&r, 0, usize::MAX).is_empty());
        assert_eq!(offsets(&r, 10, usize::MAX).len(), MAX_ENTRIES);
        // A push at or below the newest kept offset is ignored.
        r.push(5, &key, &[msg(1)]);
        assert_eq!(offsets(&r, 10, 3), vec![10, 11, 12]);
        // A gap (an append that finished late was not kept) starts the ring again.
        let next = MAX_ENTRIES as u64 + 10;
        r.push(next + 1, &key, &[msg(1)]);
        assert!(offsets(&r, 10, 3).is_empty());
        assert_eq!(offsets(&r, next + 1, 3), vec![next + 1]);
        r.push(next, &key, &[msg(1)]);
        assert!(offsets(&r, next, 3).is_empty());
        // Large payloads: the byte bound wins, the newest is always kept.
        let base = next + 2;
        r.push(
            base,
            &key,
            &[msg(MAX_BYTES / 2), msg(MAX_BYTES / 2), msg(MAX_BYTES)],
        );
        assert_eq!(offsets(&r, base + 2, 10), vec![base + 2]);
        assert!(offsets(&r, base + 1, 10).is_empty());
    }
}
