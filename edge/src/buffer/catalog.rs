//! The catalog of committed batch files: per file its live record count, bytes, priority
//! class and first receive time, held in memory for a bounded number of files; the rest
//! are *paged out* to the sled index (`index.rs`), which stores the same facts.
//!
//! Holding every file cost about 64 bytes of memory each (32 per map entry, 8 per class
//! entry, capacity doubling), so the edge's RSS grew with its backlog: 2.5 MB at 10 GB,
//! 25 MB at 100 GB. Now at most about 4 x [`CHUNK`] files are *resident* (plus the
//! ones the replicator has read and not released); every other run of [`CHUNK`]
//! consecutive files is one [`Paged`] summary in memory (its key range, file, byte and
//! record counts, oldest receive time, classes: about 0.6 bytes per file). A lookup that
//! reaches a paged range reads its entries back from sled ("paging in"): the replicator
//! reading the backlog front to back, a quota eviction looking for its victim, an open
//! protecting in-flight batches.
//!
//! A paged file is fully live and unread, so its sled entry describes it exactly
//! (`BatchInfo::of`). What keeps that true:
//! - only files above the replicator's claim (unread, so no record released) are paged
//!   out, and never the newest file of a class (the committer's tail, which a commit may
//!   grow) or one being appended to; a read pages its files in before it claims them;
//! - a new file's key is above every key before it, so a paged range never gains one;
//! - a file leaves the catalog (drained, evicted) before its sled entry is tombstoned by
//!   the reaper: until [`Catalog::forget`] says the tombstone is written, its key is kept
//!   in `gone` and skipped by a page-in (else a page-in in between would bring it back);
//! - writers rewrite whole sled group values, but every version of a value agrees on the
//!   entries of paged files, so a page-in needs no lock besides the state's.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Bound, RangeBounds};

use super::index;
use super::keyed::{KeySet, Keyed};
use super::{BatchInfo, Error};

/// Files per paged-out summary.
pub(super) const CHUNK: usize = 128;
/// Resident files above which [`Catalog::trim`] pages chunks out, in chunks.
const RESIDENT_CHUNKS: usize = 4;
/// Files just above the replicator's claim that stay resident (it reads them next, and a
/// drop-oldest eviction takes them first), in chunks.
const LEAD_CHUNKS: usize = 1;

/// Priority classes present in a chunk, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Classes([u64; 4]);

impl Classes {
    fn add(&mut self, p: u8) {
        self.0[usize::from(p >> 6)] |= 1 << (p & 63);
    }

    fn has(&self, p: u8) -> bool {
        self.0[usize::from(p >> 6)] & (1 << (p & 63)) != 0
    }

    fn iter(self) -> impl Iterator<Item = u8> {
        (0..=255u8).filter(move |p| self.has(*p))
    }
}

/// A paged-out run of files: keys `lo` (its map key) to `hi`.
#[derive(Debug, Clone, Copy)]
struct Paged {
    hi: u64,
    files: u32,
    bytes: u64,
    live: u64,
    oldest_recv_ms: i64,
    classes: Classes,
}

/// The buffer's committed batches (see the module docs).
pub(super) struct Catalog {
    /// The sled index tree paged-out entries are read from.
    tree: sled::Tree,
    resident: Keyed<BatchInfo>,
    /// The resident keys by priority class.
    classes: BTreeMap<u8, KeySet>,
    paged: Keyed<Paged>,
    /// Paged chunks holding each class.
    paged_classes: BTreeMap<u8, u32>,
    /// Files removed whose sled entry is not tombstoned yet.
    gone: KeySet,
    /// Bytes and live records of every file, resident or paged.
    bytes: u64,
    live: u64,
    /// Resident count below which [`Catalog::trim`] does not look again (it found nothing
    /// to page out at a lower count).
    retry_at: usize,
    /// Files per chunk: [`CHUNK`], or 4 in tests so that every buffer test pages.
    chunk: usize,
}

impl Catalog {
    pub(super) fn new(tree: sled::Tree) -> Catalog {
        Catalog {
            tree,
            resident: Keyed::default(),
            classes: BTreeMap::new(),
            paged: Keyed::default(),
            paged_classes: BTreeMap::new(),
            gone: KeySet::default(),
            bytes: 0,
            live: 0,
            retry_at: 0,
            chunk: if cfg!(test) { 4 } else { CHUNK },
        }
    }

    /// Sets the chunk size (tests: the production size for a memory probe).
    #[cfg(test)]
    pub(super) fn set_chunk(&mut self, files: usize) {
        self.chunk = files;
    }

    fn resident_max(&self) -> usize {
        RESIDENT_CHUNKS * self.chunk
    }

    /// Bytes of every committed file.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Live (unreleased) records of every committed file.
    pub(super) fn records(&self) -> u64 {
        self.live
    }

    /// Adds a new file (its key above every key so far) or, at open, a recovered one.
    pub(super) fn insert(&mut self, key: u64, info: BatchInfo) {
        self.bytes += info.bytes;
        self.live += u64::from(info.live);
        self.classes.entry(info.priority).or_default().insert(key);
        if let Some(old) = self.resident.insert(key, info) {
            self.bytes -= old.bytes.min(self.bytes);
            self.live -= u64::from(old.live).min(self.live);
        }
    }

    /// Records a segment appended to file `key` (a tail: always resident).
    pub(super) fn grow(&mut self, key: u64, bytes: u64, count: u32) {
        debug_assert!(self.resident.contains_key(&key), "tails stay resident");
        if let Some(info) = self.resident.get_mut(&key) {
            info.live += count;
            info.bytes += bytes;
        }
        self.bytes += bytes;
        self.live += u64::from(count);
    }

    /// Releases `n` records of file `key` (read, so resident); returns how many remain
    /// live, or `None` for an unknown file.
    pub(super) fn release(&mut self, key: u64, n: u32) -> Option<u32> {
        let info = self.resident.get_mut(&key)?;
        let n = n.min(info.live);
        info.live -= n;
        self.live -= u64::from(n).min(self.live);
        Some(info.live)
    }

    /// Removes file `key`, which must be resident (every caller found it by a lookup
    /// that pages in). Its key is skipped by page-ins until [`Catalog::forget`].
    pub(super) fn remove(&mut self, key: u64) -> Option<BatchInfo> {
        let info = self.resident.remove(&key)?;
        if let Some(set) = self.classes.get_mut(&info.priority) {
            set.remove(&key);
            if set.is_empty() {
                self.classes.remove(&info.priority);
            }
        }
        self.bytes -= info.bytes.min(self.bytes);
        self.live -= u64::from(info.live).min(self.live);
        self.gone.insert(key);
        Some(info)
    }

    /// The sled entries of `keys` are tombstones (or gone) now.
    pub(super) fn forget(&mut self, keys: &[u64]) {
        for k in keys {
            self.gone.remove(k);
        }
    }

    /// The bytes of records in resident file `key` (its file may be longer: the zeros
    /// of a pre-sized spare follow them while it grows).
    pub(super) fn bytes_of(&self, key: u64) -> Option<u64> {
        self.resident.get(&key).map(|info| info.bytes)
    }

    /// Whether `key` is a resident file.
    pub(super) fn is_resident(&self, key: u64) -> bool {
        self.resident.contains_key(&key)
    }

    /// Whether `key` is a file (paging it in if it is in a paged range).
    pub(super) fn contains(&mut self, key: u64) -> Result<bool, Error> {
        if self.resident.contains_key(&key) {
            return Ok(true);
        }
        if let Some(lo) = self.covering(key) {
            self.page_in(lo)?;
        }
        Ok(self.resident.contains_key(&key))
    }

    /// The paged chunk whose range holds `key`.
    fn covering(&self, key: u64) -> Option<u64> {
        let lo = self.paged.last_key(..=key)?;
        (self.paged.get(&lo)?.hi >= key).then_some(lo)
    }

    /// The first file with a key in `r` (resident afterwards).
    pub(super) fn first_key(
        &mut self,
        r: impl RangeBounds<u64> + Clone,
    ) -> Result<Option<u64>, Error> {
        let start = match r.start_bound() {
            Bound::Included(k) => Some(*k),
            Bound::Excluded(k) => k.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let Some(start) = start else { return Ok(None) };
        loop {
            let res = self.resident.first_key(r.clone());
            let chunk = self
                .covering(start)
                .or_else(|| self.paged.first_key(r.clone()));
            match chunk {
                Some(lo) if res.is_none_or(|k| lo < k) => self.page_in(lo)?,
                _ => return Ok(res),
            }
        }
    }

    /// The last file with a key at or below `key` (not necessarily resident).
    pub(super) fn last_key_through(&mut self, key: u64) -> Result<Option<u64>, Error> {
        let res = self.resident.last_key(..=key);
        let Some(lo) = self.paged.last_key(..=key) else {
            return Ok(res);
        };
        if res.is_some_and(|k| k > lo) {
            return Ok(res);
        }
        let hi = self.paged.get(&lo).map_or(u64::MAX, |p| p.hi);
        if hi <= key {
            return Ok(Some(hi));
        }
        self.page_in(lo)?;
        Ok(self.resident.last_key(..=key))
    }

    /// Resident files of class `p` (release lookups: a released record belongs to a
    /// file the replicator read, and read files stay resident).
    pub(super) fn class(&self, p: u8) -> Option<&KeySet> {
        self.classes.get(&p)
    }

    /// The quota victim: the oldest (or newest) file of the lowest class at or below
    /// `max` that `eligible` accepts (resident afterwards); chunks wholly at or below
    /// `claimed` are skipped unread (`eligible` refuses everything there).
    pub(super) fn victim(
        &mut self,
        max: u8,
        oldest: bool,
        claimed: Option<u64>,
        eligible: impl Fn(u64) -> bool,
    ) -> Result<Option<u64>, Error> {
        let mut present: BTreeSet<u8> = self.classes.keys().copied().collect();
        present.extend(self.paged_classes.keys().copied());
        for p in present.into_iter().filter(|p| *p <= max) {
            loop {
                let res = self.candidate(p, oldest, &eligible);
                // The paged chunk of this class that could hold a better one.
                let chunk = if self.paged_classes.contains_key(&p) {
                    let mut chunks = self
                        .paged
                        .range(..)
                        .filter(|(_, c)| c.classes.has(p) && claimed.is_none_or(|cl| c.hi > cl));
                    if oldest {
                        chunks.next().map(|(lo, _)| (*lo, *lo))
                    } else {
                        chunks.next_back().map(|(lo, c)| (*lo, c.hi))
                    }
                } else {
                    None
                };
                match chunk {
                    Some((lo, at)) if res.is_none_or(|k| (at < k) == oldest) => self.page_in(lo)?,
                    _ if res.is_some() => return Ok(res),
                    _ => break,
                }
            }
        }
        Ok(None)
    }

    /// The oldest (or newest) resident file of class `p` that `eligible` accepts.
    fn candidate(&self, p: u8, oldest: bool, eligible: &impl Fn(u64) -> bool) -> Option<u64> {
        let keys = self.classes.get(&p)?;
        if oldest {
            keys.iter().copied().find(|k| eligible(*k))
        } else {
            keys.iter().copied().rev().find(|k| eligible(*k))
        }
    }

    /// The oldest first receive time of any file.
    pub(super) fn oldest_recv_ms(&self) -> Option<i64> {
        let res = self.resident.values().map(|b| b.first_recv_ms).min();
        let paged = self.paged.values().map(|p| p.oldest_recv_ms).min();
        res.into_iter().chain(paged).min()
    }

    /// Pages runs of `chunk` files out while more than [`RESIDENT_CHUNKS`] chunks' worth
    /// are resident: files above `claimed` (after the [`LEAD_CHUNKS`] just above it), not
    /// the newest of their class, not in `appending`.
    pub(super) fn trim(&mut self, claimed: Option<u64>, appending: &BTreeSet<u64>) {
        let (chunk, max) = (self.chunk, self.resident_max());
        if self.resident.len() <= max.max(self.retry_at) {
            return;
        }
        let newest: BTreeSet<u64> = self
            .classes
            .values()
            .filter_map(|keys| keys.iter().next_back().copied())
            .collect();
        let from = claimed.map_or(Bound::Unbounded, Bound::Excluded);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut run: Option<(u64, u64, usize)> = None;
        let mut prev: Option<u64> = None;
        for (k, _) in self
            .resident
            .range((from, Bound::Unbounded))
            .skip(LEAD_CHUNKS * chunk)
        {
            let k = *k;
            // A run is a range of its own: it may not span a paged chunk.
            if prev.is_some_and(|p| self.paged.first_key((p + 1)..k).is_some()) {
                run = None;
            }
            prev = Some(k);
            if newest.contains(&k) || appending.contains(&k) {
                run = None;
                continue;
            }
            let r = run.get_or_insert((k, k, 0));
            r.1 = k;
            r.2 += 1;
            if r.2 == chunk {
                runs.push((r.0, r.1));
                run = None;
                if self.resident.len() - runs.len() * chunk <= max {
                    break;
                }
            }
        }
        for (lo, hi) in &runs {
            self.page_out(*lo, *hi);
        }
        self.retry_at = if runs.is_empty() {
            self.resident.len() + chunk
        } else {
            0
        };
    }

    /// Replaces the resident files `lo..=hi` by one summary.
    fn page_out(&mut self, lo: u64, hi: u64) {
        let keys: Vec<u64> = self.resident.range(lo..=hi).map(|(k, _)| *k).collect();
        let mut p = Paged {
            hi,
            files: 0,
            bytes: 0,
            live: 0,
            oldest_recv_ms: i64::MAX,
            classes: Classes::default(),
        };
        for k in keys {
            let Some(info) = self.resident.remove(&k) else {
                continue;
            };
            if let Some(set) = self.classes.get_mut(&info.priority) {
                set.remove(&k);
                if set.is_empty() {
                    self.classes.remove(&info.priority);
                }
            }
            p.files += 1;
            p.bytes += info.bytes;
            p.live += u64::from(info.live);
            p.oldest_recv_ms = p.oldest_recv_ms.min(info.first_recv_ms);
            p.classes.add(info.priority);
        }
        for c in p.classes.iter() {
            *self.paged_classes.entry(c).or_default() += 1;
        }
        self.paged.insert(lo, p);
    }

    /// Reads the paged chunk starting at `lo` back from sled. Entries sled lost (a
    /// damaged group value) are logged and leave the totals; their files stay on disk
    /// and the next open re-indexes them from their contents.
    fn page_in(&mut self, lo: u64) -> Result<(), Error> {
        let Some(p) = self.paged.remove(&lo) else {
            return Ok(());
        };
        let entries = match index::live_in(&self.tree, lo, p.hi) {
            Ok(e) => e,
            Err(e) => {
                // Left paged: a later lookup tries again.
                self.paged.insert(lo, p);
                return Err(e);
            }
        };
        for c in p.classes.iter() {
            if let Some(n) = self.paged_classes.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    self.paged_classes.remove(&c);
                }
            }
        }
        let (mut files, mut bytes, mut live) = (0u32, 0u64, 0u64);
        for (key, index) in entries {
            if self.gone.contains(key) {
                continue;
            }
            let info = BatchInfo::of(&index);
            files += 1;
            bytes += info.bytes;
            live += u64::from(info.live);
            self.classes.entry(info.priority).or_default().insert(key);
            self.resident.insert(key, info);
        }
        if (files, bytes, live) != (p.files, p.bytes, p.live) {
            tracing::error!(
                from = lo,
                to = p.hi,
                files = p.files,
                found = files,
                "buffer index entries missing from sled; their files are re-indexed at the next open"
            );
            self.bytes = self.bytes - p.bytes.min(self.bytes) + bytes;
            self.live = self.live - p.live.min(self.live) + live;
        }
        Ok(())
    }

    /// Resident and paged-out files (tests).
    #[cfg(test)]
    pub(super) fn counts(&self) -> (usize, usize) {
        let paged = self.paged.values().map(|p| p.files as usize).sum();
        (self.resident.len(), paged)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::super::files::Index;
    use super::super::index::Groups;
    use super::*;

    /// A catalog over a real sled index that a test keeps in step the way the buffer
    /// does: new and grown files are `put` before the catalog hears of them, removed
    /// files are tombstoned later (the reaper) and then forgotten.
    struct Rig {
        _dir: tempfile::TempDir,
        groups: Groups,
        cat: Catalog,
        /// Removed, not yet tombstoned.
        pending: Vec<u64>,
        next: u64,
    }

    /// The model: key -> (live, bytes, priority, first receive time).
    type Model = BTreeMap<u64, (u32, u64, u8, i64)>;

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let groups = Groups::open(db.open_tree("index").unwrap()).unwrap();
            let cat = Catalog::new(groups.tree());
            Rig {
                _dir: dir,
                groups,
                cat,
                pending: Vec::new(),
                next: 1,
            }
        }

        fn add(&mut self, m: &mut Model, priority: u8, count: u32, recv: i64) -> u64 {
            let key = self.next;
            self.next += u64::from(count) + 1;
            let index = Index {
                bytes: u64::from(count) * 100,
                count,
                priority,
                first_recv_ms: recv,
                last_seq: key + u64::from(count) - 1,
            };
            self.groups.put([(key, index)]).unwrap();
            self.cat.insert(key, BatchInfo::of(&index));
            m.insert(key, (count, index.bytes, priority, recv));
            key
        }

        fn remove(&mut self, m: &mut Model, key: u64) {
            assert!(self.cat.remove(key).is_some(), "{key} resident");
            m.remove(&key);
            self.pending.push(key);
        }

        fn reap(&mut self) {
            let keys = std::mem::take(&mut self.pending);
            self.groups.mark(&keys).unwrap();
            self.cat.forget(&keys);
            self.groups.remove(&keys).unwrap();
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u8, u32, i64),
        /// Grow the newest file of a class.
        Grow(u8),
        /// Read the next file above the claim and release part of it.
        Read(u32),
        Evict(u8, bool),
        Reap,
        Trim,
        Contains(u64),
        Protect(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..3, 1u32..5, 0i64..1000).prop_map(|(p, c, r)| Op::Add(p, c, r)),
            1 => (0u8..3).prop_map(Op::Grow),
            3 => (1u32..4).prop_map(Op::Read),
            3 => (0u8..3, any::<bool>()).prop_map(|(p, o)| Op::Evict(p, o)),
            2 => Just(Op::Reap),
            3 => Just(Op::Trim),
            1 => (0u64..400).prop_map(Op::Contains),
            1 => (0u64..400).prop_map(Op::Protect),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The catalog, paging with 4-file chunks, answers like a map holding every file.
        #[test]
        fn paging_is_invisible(ops in prop::collection::vec(op(), 1..200)) {
            let mut rig = Rig::new();
            let mut m = Model::new();
            let mut claimed: Option<u64> = None;
            let mut tails: BTreeMap<u8, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Add(p, c, r) => {
                        let key = rig.add(&mut m, p, c, r);
                        tails.insert(p, key);
                    }
                    Op::Grow(p) => {
                        // A tail: the newest file of its class since it was added, not
                        // removed, not claimed (the committer's rule).
                        let Some(&key) = tails.get(&p) else { continue };
                        if !m.contains_key(&key) || claimed.is_some_and(|c| key <= c) { continue; }
                        let e = m.get_mut(&key).unwrap();
                        e.0 += 1;
                        e.1 += 10;
                        let index = Index { bytes: e.1, count: e.0, priority: p, first_recv_ms: e.3, last_seq: key };
                        rig.groups.put([(key, index)]).unwrap();
                        rig.cat.grow(key, 10, 1);
                    }
                    Op::Read(n) => {
                        let from = claimed.map_or(0, |c| c + 1);
                        let got = rig.cat.first_key(from..).unwrap();
                        prop_assert_eq!(got, m.range(from..).next().map(|(k, _)| *k));
                        let Some(key) = got else { continue };
                        claimed = Some(key);
                        prop_assert!(rig.cat.is_resident(key));
                        let live = m.get_mut(&key).unwrap();
                        let n = n.min(live.0);
                        live.0 -= n;
                        let left = rig.cat.release(key, n);
                        prop_assert_eq!(left, Some(live.0));
                        if live.0 == 0 {
                            rig.remove(&mut m, key);
                        }
                    }
                    Op::Evict(max, oldest) => {
                        let want = (0..=max).find_map(|p| {
                            let mut keys = m.iter()
                                .filter(|(k, v)| v.2 == p && claimed.is_none_or(|c| **k > c))
                                .map(|(k, _)| *k);
                            if oldest { keys.next() } else { keys.next_back() }
                        });
                        let got = rig.cat
                            .victim(max, oldest, claimed, |k| claimed.is_none_or(|c| k > c))
                            .unwrap();
                        prop_assert_eq!(got, want);
                        if let Some(k) = got {
                            rig.remove(&mut m, k);
                        }
                    }
                    Op::Reap => rig.reap(),
                    Op::Trim => {
                        rig.cat.retry_at = 0;
                        rig.cat.trim(claimed, &BTreeSet::new());
                    }
                    Op::Contains(k) => prop_assert_eq!(rig.cat.contains(k).unwrap(), m.contains_key(&k)),
                    Op::Protect(k) => prop_assert_eq!(
                        rig.cat.last_key_through(k).unwrap(),
                        m.range(..=k).next_back().map(|(k, _)| *k)
                    ),
                }
                prop_assert_eq!(rig.cat.bytes(), m.values().map(|v| v.1).sum::<u64>());
                prop_assert_eq!(rig.cat.records(), m.values().map(|v| u64::from(v.0)).sum::<u64>());
                prop_assert_eq!(rig.cat.oldest_recv_ms(), m.values().map(|v| v.3).min());
                let (resident, paged) = rig.cat.counts();
                prop_assert_eq!(resident + paged, m.len());
            }
            // Everything reads back in order, with the files' own facts.
            let mut from = 0;
            while let Some(k) = rig.cat.first_key(from..).unwrap() {
                let info = rig.cat.resident.get(&k).unwrap();
                let want = m.remove(&k).unwrap();
                prop_assert_eq!((info.live, info.bytes, info.priority, info.first_recv_ms), want);
                from = k + 1;
            }
            prop_assert!(m.is_empty());
        }
    }

    /// However many files, at most a bounded number are resident.
    #[test]
    fn resident_files_stay_bounded() {
        let mut rig = Rig::new();
        let mut m = Model::new();
        for i in 0..2_000 {
            rig.add(&mut m, (i % 3) as u8, 2, i);
            rig.cat.trim(None, &BTreeSet::new());
            let (resident, _) = rig.cat.counts();
            assert!(resident <= 5 * 4, "{resident} resident");
        }
        assert_eq!(
            rig.cat.counts(),
            (rig.cat.resident.len(), 2_000 - rig.cat.resident.len())
        );
        assert!(rig.cat.paged.len() >= (2_000 - 5 * 4) / 4);
    }

    /// A file removed while its sled entry is still live (the reaper has not run) does
    /// not come back when its range is paged out and in again.
    #[test]
    fn a_removed_file_is_not_paged_back_in() {
        let mut rig = Rig::new();
        let mut m = Model::new();
        let keys: Vec<u64> = (0..40).map(|i| rig.add(&mut m, 0, 1, i)).collect();
        // Evict a file in the middle (resident: nothing paged yet), then page out.
        let victim = keys[22];
        rig.remove(&mut m, victim);
        rig.cat.trim(None, &BTreeSet::new());
        assert!(
            !rig.cat.is_resident(keys[21]) && !rig.cat.is_resident(keys[23]),
            "its neighbours are paged out"
        );
        // Paged back in before the reaper tombstoned it.
        assert!(!rig.cat.contains(victim).unwrap());
        assert!(rig.cat.contains(keys[23]).unwrap());
        let mut from = 0;
        let mut seen = Vec::new();
        while let Some(k) = rig.cat.first_key(from..).unwrap() {
            seen.push(k);
            from = k + 1;
        }
        assert_eq!(seen, m.keys().copied().collect::<Vec<_>>());
        assert_eq!(rig.cat.records(), 39);
    }
}
