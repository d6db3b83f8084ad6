//! The batches of a `memory` partition (topic config `storage.mode=memory`): kept in this
//! process only, never written to the store, gone at a restart.
//!
//! What a memory partition still writes: one small record in the store's `meta` family
//! per [`RESERVE`] offsets (see [`PartitionLog`](super::partition::PartitionLog)), so a
//! restarted cloud hands out offsets above every offset it handed out before: a consumer's
//! committed offset or an MQTT session's position never points at a different record.
//!
//! Bounded: at most `cap` bytes of batches (the topic's `retention.bytes`, else
//! `storage.memory_partition_bytes`); the oldest batches go first, the newest is always
//! kept. All memory partitions also share one [`Budget`] (`storage.memory_total_bytes`):
//! while they hold more than it, a partition that appends drops its own oldest batches
//! (down to its newest), so the total stays under the budget plus at most one batch per
//! memory partition. `retention.ms` applies as for stored topics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::batch::BatchHeader;

/// Offsets reserved per record in `meta`: a restart skips at most this many offsets.
pub(crate) const RESERVE: u64 = 1 << 16;

/// Bytes held by all memory partitions together, and their limit.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes held by all memory partitions now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used() > self.limit
    }
}

/// A memory partition's batches, oldest first, each under its base offset.
pub(crate) struct MemLog {
    batches: VecDeque<(u64, Bytes)>,
    bytes: usize,
    cap: usize,
    budget: Arc<Budget>,
}

impl Drop for MemLog {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl MemLog {
    pub(crate) fn new(cap: usize, budget: Arc<Budget>) -> MemLog {
        MemLog {
            batches: VecDeque::new(),
            bytes: 0,
            cap,
            budget,
        }
    }

    /// A new cap (the topic's `retention.bytes` was altered): applies from the next push.
    pub(crate) fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// Adds a batch at `base` (above every batch held) and evicts the oldest while the
    /// partition holds more than its cap or all memory partitions more than their
    /// budget. Returns the new first base offset if any batch was evicted.
    pub(crate) fn push(&mut self, base: u64, batch: Bytes) -> Option<u64> {
        self.bytes += batch.len();
        self.budget.used.fetch_add(batch.len(), Ordering::Relaxed);
        self.batches.push_back((base, batch));
        let mut evicted = false;
        while (self.bytes > self.cap || self.budget.over()) && self.batches.len() > 1 {
            if let Some((_, b)) = self.batches.pop_front() {
                self.forget(b.len());
                evicted = true;
            }
        }
        evicted
            .then(|| self.batches.front().map(|(o, _)| *o))
            .flatten()
    }

    fn forget(&mut self, len: usize) {
        self.bytes -= len;
        self.budget.used.fetch_sub(len, Ordering::Relaxed);
    }

    /// Batches starting with the one that contains `from` (the greatest base offset <=
    /// `from`, else the first after it), until `max_bytes` (at least one batch) or
    /// `max_entries`: the contract of `Store::log_read`.
    pub(crate) fn read(
        &self,
        from: u64,
        max_bytes: usize,
        max_entries: usize,
    ) -> Vec<(u64, Bytes)> {
        let after = self.batches.partition_point(|(o, _)| *o <= from);
        let mut out = Vec::new();
        let mut total = 0usize;
        for (o, b) in self.batches.range(after.saturating_sub(1)..) {
            if !out.is_empty() && total + b.len() > max_bytes {
                break;
            }
            total += b.len();
            out.push((*o, b.clone()));
            if out.len() >= max_entries || total >= max_bytes {
                break;
            }
        }
        out
    }

    /// Drops the batches whose newest timestamp is before `cutoff_ms` (oldest first, up to
    /// the first newer one; never the last batch). Returns how many were dropped and the
    /// new first base offset.
    pub(crate) fn expire(&mut self, cutoff_ms: i64) -> (u64, Option<u64>) {
        let mut n = 0;
        while self.batches.len() > 1 {
            let old = self.batches.front().is_some_and(|(_, b)| {
                BatchHeader::parse(b).is_ok_and(|h| h.max_timestamp < cutoff_ms)
            });
            if !old {
                break;
            }
            if let Some((_, b)) = self.batches.pop_front() {
                self.forget(b.len());
                n += 1;
            }
        }
        (n, self.batches.front().map(|(o, _)| *o).filter(|_| n > 0))
    }

    /// Drops the batches that end at or below `offset` (DeleteRecords); returns how many.
    pub(crate) fn drop_before(&mut self, offset: u64) -> u64 {
        let mut n = 0;
        while let Some((base, b)) = self.batches.front() {
            if super::batch::end_of(*base, b) > offset {
                break;
            }
            if let Some((_, b)) = self.batches.pop_front() {
                self.forget(b.len());
                n += 1;
            }
        }
        n
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    fn log(cap: usize) -> MemLog {
        MemLog::new(cap, Budget::new(usize::MAX))
    }

    #[test]
    fn read_starts_at_the_batch_containing_the_offset() {
        let mut m = log(1 << 20);
        for base in [10u64, 20, 30] {
            assert_eq!(m.push(base, b(100)), None);
        }
        let bases = |v: Vec<(u64, Bytes)>| v.into_iter().map(|(o, _)| o).collect::<Vec<_>>();
        assert_eq!(bases(m.read(0, usize::MAX, 10)), [10, 20, 30]);
        assert_eq!(bases(m.read(25, usize::MAX, 10)), [20, 30]);
        assert_eq!(bases(m.read(30, usize::MAX, 10)), [30]);
        assert_eq!(bases(m.read(99, usize::MAX, 10)), [30]);
        assert_eq!(bases(m.read(10, 150, 10)), [10], "byte limit");
        assert_eq!(bases(m.read(10, 1, 10)), [10], "at least one batch");
        assert_eq!(bases(m.read(10, usize::MAX, 2)), [10, 20], "entry limit");
        assert!(log(10).read(0, 10, 10).is_empty());
    }

    #[test]
    fn the_cap_evicts_the_oldest_and_keeps_the_newest() {
        let mut m = log(250);
        assert_eq!(m.push(0, b(100)), None);
        assert_eq!(m.push(1, b(100)), None);
        assert_eq!(m.push(2, b(100)), Some(1));
        assert_eq!(m.bytes(), 200);
        assert_eq!(
            m.push(3, b(1000)),
            Some(3),
            "a batch above the cap stays alone"
        );
        assert_eq!(m.bytes(), 1000);
        assert_eq!(m.read(0, usize::MAX, 10).len(), 1);
    }

    /// The shared budget: a partition that appends while all hold too much drops its own
    /// oldest batches (never its newest); dropped and expired batches and a dropped log
    /// give their bytes back.
    #[test]
    fn the_budget_is_shared_and_given_back() {
        let budget = Budget::new(250);
        let mut x = MemLog::new(1 << 20, budget.clone());
        let mut y = MemLog::new(1 << 20, budget.clone());
        assert_eq!(x.push(0, b(100)), None);
        assert_eq!(x.push(1, b(100)), None);
        assert_eq!(budget.used(), 200);
        // Over the budget, but y holds only its newest batch.
        assert_eq!(y.push(0, b(100)), None);
        assert_eq!(budget.used(), 300);
        // y's next append drops y's oldest, not x's.
        assert_eq!(y.push(1, b(100)), Some(1));
        assert_eq!((x.bytes(), y.bytes(), budget.used()), (200, 100, 300));
        // x's next append drops x's two oldest: 100 + 100 = 200 <= 250.
        assert_eq!(x.push(2, b(100)), Some(2));
        assert_eq!((x.bytes(), budget.used()), (100, 200));
        drop(x);
        assert_eq!(budget.used(), 100);
        drop(y);
        assert_eq!(budget.used(), 0);
    }
}
