//! The buffer's in-memory maps over batch keys, kept compact because they hold one entry
//! per resident batch file (`catalog.rs` bounds how many are resident; before it, every
//! file of the backlog was).
//!
//! A `BTreeMap<u64, BatchInfo>` cost about 90 bytes per file and a `BTreeSet<u64>` about
//! 21 (heaptrack of a 3 GB backlog: 1.1 MB and 0.25 MB for 12,000 files), so the edge's
//! RSS grew with its backlog. Here each is one key-sorted `VecDeque`: 32 and 8 bytes per
//! entry. Batch keys are sequences, so new files go at the back, and a drain releases
//! files from the front; `VecDeque::remove` shifts the shorter side, so only a removal
//! from the middle (an eviction, a live-first drain) moves entries, a few hundred
//! kilobytes at most. Lookups are binary searches. The capacity is given back when the
//! map falls under a quarter of it.

use std::collections::VecDeque;
use std::ops::{Bound, Range, RangeBounds};

/// A map from batch keys to `V`, sorted by key.
#[derive(Debug)]
pub(super) struct Keyed<V> {
    v: VecDeque<(u64, V)>,
}

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Keyed { v: VecDeque::new() }
    }
}

impl<V> Keyed<V> {
    fn find(&self, key: u64) -> Result<usize, usize> {
        self.v.binary_search_by_key(&key, |e| e.0)
    }

    /// The positions of the entries with keys in `r` (empty if its start is past its end).
    fn span(&self, r: impl RangeBounds<u64>) -> Range<usize> {
        let a = match r.start_bound() {
            Bound::Unbounded => 0,
            Bound::Included(k) => self.find(*k).unwrap_or_else(|i| i),
            Bound::Excluded(k) => self.find(*k).map_or_else(|i| i, |i| i + 1),
        };
        let b = match r.end_bound() {
            Bound::Unbounded => self.v.len(),
            Bound::Included(k) => self.find(*k).map_or_else(|i| i, |i| i + 1),
            Bound::Excluded(k) => self.find(*k).unwrap_or_else(|i| i),
        };
        a..b.max(a)
    }

    pub(super) fn len(&self) -> usize {
        self.v.len()
    }

    pub(super) fn contains_key(&self, key: &u64) -> bool {
        self.find(*key).is_ok()
    }

    pub(super) fn get(&self, key: &u64) -> Option<&V> {
        let i = self.find(*key).ok()?;
        self.v.get(i).map(|e| &e.1)
    }

    pub(super) fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        let i = self.find(*key).ok()?;
        self.v.get_mut(i).map(|e| &mut e.1)
    }

    /// Inserts or replaces; returns the replaced value.
    pub(super) fn insert(&mut self, key: u64, value: V) -> Option<V> {
        if self.v.back().is_none_or(|e| e.0 < key) {
            self.v.push_back((key, value));
            return None;
        }
        match self.find(key) {
            Ok(i) => Some(std::mem::replace(&mut self.v[i].1, value)),
            Err(i) => {
                self.v.insert(i, (key, value));
                None
            }
        }
    }

    pub(super) fn remove(&mut self, key: &u64) -> Option<V> {
        let i = self.find(*key).ok()?;
        let out = self.v.remove(i).map(|e| e.1);
        if self.v.capacity() > 64 && self.v.len() < self.v.capacity() / 4 {
            self.v.shrink_to(self.v.len() * 2);
        }
        out
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.v.iter().map(|e| &e.1)
    }

    /// The first key in `r`.
    pub(super) fn first_key(&self, r: impl RangeBounds<u64>) -> Option<u64> {
        self.v.range(self.span(r)).next().map(|e| e.0)
    }

    /// The last key in `r`.
    pub(super) fn last_key(&self, r: impl RangeBounds<u64>) -> Option<u64> {
        self.v.range(self.span(r)).next_back().map(|e| e.0)
    }

    /// The entries with keys in `r`, in key order.
    pub(super) fn range(
        &self,
        r: impl RangeBounds<u64>,
    ) -> impl DoubleEndedIterator<Item = (&u64, &V)> {
        self.v.range(self.span(r)).map(|e| (&e.0, &e.1))
    }
}

/// A set of batch keys, sorted.
#[derive(Debug, Default)]
pub(super) struct KeySet(Keyed<()>);

impl KeySet {
    /// Adds `key`; returns whether it was new.
    pub(super) fn insert(&mut self, key: u64) -> bool {
        self.0.insert(key, ()).is_none()
    }

    pub(super) fn remove(&mut self, key: &u64) -> bool {
        self.0.remove(key).is_some()
    }

    pub(super) fn contains(&self, key: u64) -> bool {
        self.0.contains_key(&key)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// The first key in `r`.
    pub(super) fn first(&self, r: impl RangeBounds<u64>) -> Option<u64> {
        self.0.first_key(r)
    }

    /// The last key in `r`.
    pub(super) fn last(&self, r: impl RangeBounds<u64>) -> Option<u64> {
        self.0.last_key(r)
    }

    /// The keys in `r`, in order.
    pub(super) fn range(&self, r: impl RangeBounds<u64>) -> impl DoubleEndedIterator<Item = &u64> {
        self.0.range(r).map(|(k, _)| k)
    }

    /// All keys, in order.
    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = &u64> {
        self.range(..)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::Bound::{Excluded, Included, Unbounded};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        Range(Bound<u64>, Bound<u64>),
    }

    fn bound() -> impl Strategy<Value = Bound<u64>> {
        prop_oneof![
            Just(Unbounded),
            (0u64..60).prop_map(Included),
            (0u64..60).prop_map(Excluded),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..60, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (0u64..60).prop_map(Op::Remove),
            1 => (bound(), bound()).prop_map(|(a, b)| Op::Range(a, b)),
        ]
    }

    fn valid(a: Bound<u64>, b: Bound<u64>) -> bool {
        // BTreeMap panics on a range whose start is after its end; Keyed returns nothing.
        match (a, b) {
            (Included(x) | Excluded(x), Included(y) | Excluded(y)) => {
                x < y || (x == y && matches!((a, b), (Included(_), Included(_))))
            }
            _ => true,
        }
    }

    proptest! {
        /// Keyed behaves as a BTreeMap: same answers to every operation the buffer uses.
        #[test]
        fn keyed_is_a_sorted_map(ops in prop::collection::vec(op(), 0..300)) {
            let mut k: Keyed<u32> = Keyed::default();
            let mut m: BTreeMap<u64, u32> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(key, v) => prop_assert_eq!(k.insert(key, v), m.insert(key, v)),
                    Op::Remove(key) => prop_assert_eq!(k.remove(&key), m.remove(&key)),
                    Op::Range(a, b) => {
                        let got: Vec<(u64, u32)> = k.range((a, b)).map(|(x, y)| (*x, *y)).collect();
                        let want: Vec<(u64, u32)> = if valid(a, b) {
                            m.range((a, b)).map(|(x, y)| (*x, *y)).collect()
                        } else {
                            Vec::new()
                        };
                        prop_assert_eq!(&got, &want);
                        let back = k.range((a, b)).next_back().map(|(x, _)| *x);
                        prop_assert_eq!(back, want.last().map(|e| e.0));
                        prop_assert_eq!(k.last_key((a, b)), want.last().map(|e| e.0));
                        prop_assert_eq!(k.first_key((a, b)), want.first().map(|e| e.0));
                    }
                }
                prop_assert_eq!(k.len(), m.len());
                for (key, v) in &m {
                    prop_assert!(k.contains_key(key));
                    prop_assert_eq!(k.get(key), Some(v));
                    prop_assert_eq!(k.get_mut(key).copied(), Some(*v));
                }
                let vals: Vec<u32> = k.values().copied().collect();
                prop_assert_eq!(vals, m.values().copied().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn capacity_is_given_back_after_a_drain() {
        let mut k: Keyed<[u64; 3]> = Keyed::default();
        for key in 0..10_000 {
            k.insert(key, [key; 3]);
        }
        let full = k.v.capacity();
        for key in 0..9_990 {
            assert_eq!(k.remove(&key), Some([key; 3]));
        }
        assert!(k.v.capacity() < full / 100, "{} of {full}", k.v.capacity());
        let left: Vec<u64> = k.range(..).map(|(key, _)| *key).collect();
        assert_eq!(left, (9_990..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn key_set_ranges() {
        let mut s = KeySet::default();
        for key in [5, 1, 9, 7] {
            assert!(s.insert(key));
        }
        assert!(!s.insert(7));
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [1, 5, 7, 9]);
        assert_eq!(s.range(..=6).next_back(), Some(&5));
        assert_eq!(s.last(..=6), Some(5));
        assert_eq!(s.first((Excluded(7), Unbounded)), Some(9));
        assert_eq!(s.first((Excluded(9), Unbounded)), None);
        assert!(s.remove(&5));
        assert!(!s.remove(&5));
        assert_eq!(s.iter().next_back(), Some(&9));
    }
}
