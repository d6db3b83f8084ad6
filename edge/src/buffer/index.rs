//! The sled index of batch files, [`GROUP`] files per sled value.
//!
//! One sled entry per batch file cost about 400 bytes of heap per file whatever sled's
//! cache size (`rss_probe RAW=1 VLEN=29`), so the edge's memory grew about 2 MB per GB of
//! backlog: a 3 GB drain peaked at 34-37 MB, over the 32 MB goal. Packed 64 to a value
//! (the `index` tree; key: the group's first file key, big endian; value: its entries in
//! key order), a 3 GB drain peaks at about 31 MB and 100 B ingest is not slower
//! (session 15).
//!
//! sled keeps the group values it writes in memory until its cache (`cache_capacity`) is
//! full, so the index cost its size in heap up to then: with fixed 38-byte entries
//! (`key:u64 | state:u8 | Index`), 3 MB at 80,000 files (a 20 GB backlog of 256 KB
//! files). Past that it levels off (`rss_probe FILES=400000 CACHE=4194304`, compact
//! values: 9.5 MB at 100,000 files, 10.7 at 200,000, 11.4 at 400,000). Values are written
//! in a compact format (see [`encode`]: varints, keys and receive times as differences),
//! about 12 bytes an entry; `rss_probe FILES=80000`: 12.7 -> 9.4 MB. Values in the fixed
//! format are still read, and rewritten compact when their group next changes.
//!
//! A new batch file's key (its first record's sequence) is above every key before it,
//! so files fill the newest group in key order and a key's group is the greatest group
//! key at or below it. The committer (new and grown files) and the reaper (tombstones,
//! removals) rewrite whole groups, so both go through the one [`Groups`] behind
//! `Inner::index`.

use std::collections::btree_map::Entry as Slot;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Included};

use super::files::Index;
use super::{varint, Error};

/// Files per group.
pub(super) const GROUP: usize = 64;

/// First byte of a group value in the compact format (below).
const COMPACT: u8 = 0xC1;

/// The fixed format's entry: `key:u64 | state:u8 (0 live, 1 tombstone) | Index`.
const LIVE: u8 = 0;
const TOMBSTONE: u8 = 1;
const ENTRY: usize = 8 + 1 + Index::LEN;

/// One file's entry: its index, or `None` for a tombstone (a deletion in progress, see
/// `reap.rs`).
pub(super) type Entry = (u64, Option<Index>);

/// The groups of one buffer.
pub(super) struct Groups {
    tree: sled::Tree,
    /// The key of every group.
    firsts: BTreeSet<u64>,
}

/// A group value: [`COMPACT`], then per entry in key order the varints of its key minus
/// the previous entry's (the first: minus 0) and of its state (0 a tombstone, else
/// `priority << 1 | 1`), and for a live entry those of its bytes, its count, its first
/// receive time minus the previous live entry's (zigzag), and its last sequence minus
/// its key (wrapping).
fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + entries.len() * 12);
    v.push(COMPACT);
    let (mut prev_key, mut prev_recv) = (0u64, 0i64);
    for (key, index) in entries {
        varint::put(&mut v, key.wrapping_sub(prev_key));
        prev_key = *key;
        let Some(i) = index else {
            varint::put(&mut v, 0);
            continue;
        };
        varint::put(&mut v, u64::from(i.priority) << 1 | 1);
        varint::put(&mut v, i.bytes);
        varint::put(&mut v, u64::from(i.count));
        varint::put(
            &mut v,
            varint::zigzag(i.first_recv_ms.wrapping_sub(prev_recv)),
        );
        prev_recv = i.first_recv_ms;
        varint::put(&mut v, i.last_seq.wrapping_sub(*key));
    }
    v
}

/// A group's entries from a value of either format, or `None` if the value is damaged.
fn decode(v: &[u8]) -> Option<Vec<Entry>> {
    match v.split_first() {
        Some((&COMPACT, rest)) => decode_compact(rest),
        _ => decode_fixed(v),
    }
}

fn decode_compact(mut v: &[u8]) -> Option<Vec<Entry>> {
    let mut out = Vec::with_capacity(v.len() / 10);
    let (mut prev_key, mut prev_recv) = (0u64, 0i64);
    while !v.is_empty() {
        let key = prev_key.wrapping_add(varint::take(&mut v)?);
        prev_key = key;
        let state = varint::take(&mut v)?;
        if state == 0 {
            out.push((key, None));
            continue;
        }
        if state & 1 == 0 {
            return None;
        }
        let priority = u8::try_from(state >> 1).ok()?;
        let bytes = varint::take(&mut v)?;
        let count = u32::try_from(varint::take(&mut v)?).ok()?;
        let first_recv_ms = prev_recv.wrapping_add(varint::unzigzag(varint::take(&mut v)?));
        prev_recv = first_recv_ms;
        let last_seq = key.wrapping_add(varint::take(&mut v)?);
        let index = Index {
            bytes,
            count,
            priority,
            first_recv_ms,
            last_seq,
        };
        out.push((key, Some(index)));
    }
    Some(out)
}

/// A value written before the compact format: fixed [`ENTRY`]s. Its first byte is its
/// first key's top byte, never [`COMPACT`]: that would take a sequence of at least
/// 0xC1 << 56.
fn decode_fixed(v: &[u8]) -> Option<Vec<Entry>> {
    if !v.len().is_multiple_of(ENTRY) {
        return None;
    }
    v.chunks(ENTRY)
        .map(|e| {
            let key = u64::from_be_bytes(e[..8].try_into().ok()?);
            match e[8] {
                LIVE => Some((key, Some(Index::decode(&e[9..])?))),
                TOMBSTONE => Some((key, None)),
                _ => None,
            }
        })
        .collect()
}

fn group_key(tree_key: &[u8]) -> Option<u64> {
    tree_key.try_into().ok().map(u64::from_be_bytes)
}

/// The live entries with keys in `lo..=hi`, read from the groups holding them (the
/// catalog's page-in, `catalog.rs`). A damaged group value contributes nothing.
pub(super) fn live_in(tree: &sled::Tree, lo: u64, hi: u64) -> Result<Vec<(u64, Index)>, Error> {
    let mut out = Vec::new();
    let (lo_b, hi_b) = (lo.to_be_bytes(), hi.to_be_bytes());
    let first = tree.range(..=lo_b).next_back().transpose()?;
    let rest = tree.range((Excluded(lo_b), Included(hi_b)));
    for item in first.into_iter().map(Ok).chain(rest) {
        let (_, v) = item?;
        for (key, index) in decode(&v).unwrap_or_default() {
            if let (Some(i), true) = (index, (lo..=hi).contains(&key)) {
                out.push((key, i));
            }
        }
    }
    Ok(out)
}

impl Groups {
    /// The groups stored in `tree` (recovery rewrites them at open, see
    /// [`Groups::rewrite`]).
    pub(super) fn open(tree: sled::Tree) -> Result<Groups, Error> {
        let mut firsts = BTreeSet::new();
        for k in tree.iter().keys() {
            if let Some(g) = group_key(&k?) {
                firsts.insert(g);
            }
        }
        Ok(Groups { tree, firsts })
    }

    /// The tree the groups are stored in.
    pub(super) fn tree(&self) -> sled::Tree {
        self.tree.clone()
    }

    /// Every stored entry, in key order, and how many group values were damaged (their
    /// files are rebuilt from their contents at open, their tombstones are lost).
    pub(super) fn entries(&self) -> Result<(Vec<Entry>, u64), Error> {
        let mut out = Vec::new();
        let mut damaged = 0;
        for item in self.tree.iter() {
            let (_, v) = item?;
            match decode(&v) {
                Some(e) => out.extend(e),
                None => damaged += 1,
            }
        }
        // In key order already: sled iterates the groups by their (big-endian) keys, and
        // each holds the keys from its own up to the next group's, sorted.
        Ok((out, damaged))
    }

    fn group_of(&self, key: u64) -> Option<u64> {
        self.firsts.range(..=key).next_back().copied()
    }

    fn load(&self, group: u64) -> Result<Vec<Entry>, Error> {
        Ok(self
            .tree
            .get(group.to_be_bytes())?
            .and_then(|v| decode(&v))
            .unwrap_or_default())
    }

    /// Applies `change` to the group of each key in `keys` (loaded once per group),
    /// returning the groups changed (an empty one is removed by [`Groups::write`]). A key
    /// below every group starts a group of its own when `create` is set; an entry that
    /// `change` hands back starts the next group (its group was full).
    fn edit<K>(
        &mut self,
        keys: impl IntoIterator<Item = K>,
        key_of: impl Fn(&K) -> u64,
        create: bool,
        mut change: impl FnMut(&mut Vec<Entry>, K) -> Option<Entry>,
    ) -> Result<BTreeMap<u64, Vec<Entry>>, Error> {
        let mut changed: BTreeMap<u64, Vec<Entry>> = BTreeMap::new();
        for item in keys {
            let key = key_of(&item);
            let g = match self.group_of(key) {
                Some(g) => g,
                None if create => {
                    self.firsts.insert(key);
                    key
                }
                None => continue,
            };
            let entries = match changed.entry(g) {
                Slot::Occupied(o) => o.into_mut(),
                Slot::Vacant(v) => v.insert(self.load(g)?),
            };
            if let Some(next) = change(entries, item) {
                self.firsts.insert(next.0);
                changed.insert(next.0, vec![next]);
            }
        }
        Ok(changed)
    }

    /// Stores new and grown files' entries with plain inserts (not a `sled::Batch`, which
    /// writes out and syncs sled's log buffer around it: see `commit.rs`).
    pub(super) fn put(
        &mut self,
        files: impl IntoIterator<Item = (u64, Index)>,
    ) -> Result<(), Error> {
        let changed = self.edit(
            files,
            |(key, _)| *key,
            true,
            |entries, (key, index)| {
                match entries.binary_search_by_key(&key, |(k, _)| *k) {
                    Ok(at) => entries[at].1 = Some(index),
                    // The group is full: this file starts the next one.
                    Err(at) if at == entries.len() && entries.len() >= GROUP => {
                        return Some((key, Some(index)))
                    }
                    Err(at) => entries.insert(at, (key, Some(index))),
                }
                None
            },
        )?;
        for (group, entries) in changed {
            self.tree.insert(group.to_be_bytes(), encode(&entries))?;
        }
        Ok(())
    }

    /// Turns the entries of `keys` into tombstones, all in one sled batch (step 1 of a
    /// deletion in `reap.rs`).
    pub(super) fn mark(&mut self, keys: &[u64]) -> Result<(), Error> {
        // A key without an entry gets a tombstone too: its file goes either way.
        let changed = self.edit(
            keys.iter().copied(),
            |k| *k,
            true,
            |entries, key| {
                match entries.binary_search_by_key(&key, |(k, _)| *k) {
                    Ok(at) => entries[at].1 = None,
                    Err(at) => entries.insert(at, (key, None)),
                }
                None
            },
        )?;
        self.write(changed)
    }

    /// Removes the entries of `keys`, all in one sled batch (step 4 of a deletion); a
    /// group left empty is removed.
    pub(super) fn remove(&mut self, keys: &[u64]) -> Result<(), Error> {
        let changed = self.edit(
            keys.iter().copied(),
            |k| *k,
            false,
            |entries, key| {
                if let Ok(at) = entries.binary_search_by_key(&key, |(k, _)| *k) {
                    entries.remove(at);
                }
                None
            },
        )?;
        self.write(changed)
    }

    fn write(&mut self, changed: BTreeMap<u64, Vec<Entry>>) -> Result<(), Error> {
        if changed.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (group, entries) in changed {
            if entries.is_empty() {
                batch.remove(&group.to_be_bytes());
                self.firsts.remove(&group);
            } else {
                batch.insert(&group.to_be_bytes(), encode(&entries));
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Replaces every group with `live`'s entries (in key order), packed [`GROUP`] to a
    /// value (recovery, once the tombstoned files are gone): the old groups go in one
    /// sled batch, flushed, then each new group is its own insert. One batch of every
    /// group cost about 31 MB of RSS that stayed after an open rebuilding a
    /// 200,000-file index (`rss_probe`, `REOPEN=1`); group by group, about 2 MB. A crash
    /// part-way leaves some of the new groups and none of the old ones, and the next
    /// open re-indexes the files no group holds from their contents.
    pub(super) fn rewrite(&mut self, live: &[(u64, Index)]) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for g in &self.firsts {
            batch.remove(&g.to_be_bytes());
        }
        self.firsts.clear();
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        for chunk in live.chunks(GROUP) {
            let entries: Vec<Entry> = chunk.iter().map(|(k, i)| (*k, Some(*i))).collect();
            let group = chunk[0].0;
            self.tree.insert(group.to_be_bytes(), encode(&entries))?;
            self.firsts.insert(group);
        }
        Ok(())
    }

    /// Whether no entry is stored (tests).
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The first stored entry's key (tests).
    #[cfg(test)]
    pub(super) fn first_key(&self) -> Result<Option<u64>, Error> {
        Ok(self.entries()?.0.first().map(|(k, _)| *k))
    }
}

/// What every value was before the compact format (tests).
#[cfg(test)]
pub(super) fn encode_fixed(entries: &[Entry]) -> Vec<u8> {
    let mut v = Vec::new();
    for (key, index) in entries {
        v.extend_from_slice(&key.to_be_bytes());
        match index {
            Some(i) => {
                v.push(LIVE);
                v.extend_from_slice(&i.encode());
            }
            None => {
                v.push(TOMBSTONE);
                v.extend_from_slice(&[0; Index::LEN]);
            }
        }
    }
    v
}

/// `v` (a group value of either format) in the fixed format (tests).
#[cfg(test)]
pub(super) fn to_fixed(v: &[u8]) -> Vec<u8> {
    encode_fixed(&decode(v).unwrap())
}

/// Whether `v` is a group value in the compact format (tests).
#[cfg(test)]
pub(super) fn is_compact(v: &[u8]) -> bool {
    v.first() == Some(&COMPACT)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn index(n: u64) -> Index {
        Index {
            bytes: 100 + n,
            count: 1,
            priority: 0,
            first_recv_ms: 7,
            last_seq: n,
        }
    }

    #[test]
    fn files_fill_groups_of_64_then_deletions_empty_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let mut g = Groups::open(db.open_tree("index").unwrap()).unwrap();
        // 130 files, committed a few per round, one grown after its group filled.
        for round in (0..130u64).collect::<Vec<_>>().chunks(7) {
            g.put(round.iter().map(|k| (k * 10, index(*k)))).unwrap();
        }
        g.put([(50, index(999))]).unwrap();
        assert_eq!(g.tree.len(), 3, "64 + 64 + 2");
        let (entries, damaged) = g.entries().unwrap();
        assert_eq!(damaged, 0);
        assert_eq!(entries.len(), 130);
        assert_eq!(entries[5], (50, Some(index(999))));
        // Reopened, the same groups.
        let mut g = Groups::open(db.open_tree("index").unwrap()).unwrap();
        g.mark(&[0, 640, 1290]).unwrap();
        let (entries, _) = g.entries().unwrap();
        assert_eq!(entries.iter().filter(|(_, i)| i.is_none()).count(), 3);
        let all: Vec<u64> = (0..130u64).map(|k| k * 10).collect();
        g.remove(&all).unwrap();
        assert!(g.tree.is_empty());
        assert!(g.firsts.is_empty());
        // A later file starts a fresh group; a key without an entry, below every group,
        // still gets its tombstone.
        g.put([(5000, index(500))]).unwrap();
        assert_eq!(g.entries().unwrap().0, vec![(5000, Some(index(500)))]);
        g.mark(&[7]).unwrap();
        assert_eq!(
            g.entries().unwrap().0,
            vec![(7, None), (5000, Some(index(500)))]
        );
    }

    #[test]
    fn a_damaged_group_is_counted_and_the_rest_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("index").unwrap();
        let mut g = Groups::open(tree.clone()).unwrap();
        g.put((0..70u64).map(|k| (k, index(k)))).unwrap();
        tree.insert(0u64.to_be_bytes(), &[1, 2, 3][..]).unwrap();
        let (entries, damaged) = g.entries().unwrap();
        assert_eq!(damaged, 1);
        assert_eq!(entries.len(), 6, "the second group's 6 files");
        // A compact value cut inside a varint.
        tree.insert(64u64.to_be_bytes(), &[COMPACT, 0x80][..])
            .unwrap();
        assert_eq!(g.entries().unwrap(), (vec![], 2));
    }

    fn any_entry() -> impl Strategy<Value = Entry> {
        let index = (
            any::<u64>(),
            any::<u32>(),
            any::<u8>(),
            any::<i64>(),
            any::<u64>(),
        )
            .prop_map(|(bytes, count, priority, first_recv_ms, last_seq)| Index {
                bytes,
                count,
                priority,
                first_recv_ms,
                last_seq,
            });
        (any::<u64>(), proptest::option::of(index))
    }

    proptest! {
        #[test]
        fn any_group_round_trips(entries in proptest::collection::vec(any_entry(), 0..80)) {
            prop_assert_eq!(decode(&encode(&entries)), Some(entries));
        }

        #[test]
        fn old_values_are_read(entries in proptest::collection::vec(any_entry(), 0..80)) {
            let entries: Vec<Entry> =
                entries.into_iter().map(|(k, i)| (k >> 8, i)).collect();
            prop_assert_eq!(decode(&encode_fixed(&entries)), Some(entries));
        }

        #[test]
        fn decoding_garbage_never_panics(v in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode(&v);
        }

        /// A cut inside an entry is damage, never a shorter group.
        #[test]
        fn a_cut_value_is_damaged_or_a_prefix(entries in proptest::collection::vec(any_entry(), 1..20), cut in any::<prop::sample::Index>()) {
            let v = encode(&entries);
            let cut = 1 + cut.index(v.len() - 1);
            if let Some(got) = decode(&v[..cut]) {
                prop_assert!(got.len() < entries.len());
                prop_assert_eq!(&got[..], &entries[..got.len()]);
                let whole = encode(&got);
                prop_assert_eq!(&whole[..], &v[..cut], "only at an entry boundary");
            }
        }
    }

    /// A backlog's files (256 records of 1 KB each, received a second apart): 12 bytes
    /// an entry in the compact format against 38 (the first entry's key and time take a
    /// few more).
    #[test]
    fn a_backlogs_entries_take_12_bytes() {
        let entries: Vec<Entry> = (0..64u64)
            .map(|f| {
                let key = 1_000_000 + f * 256;
                let index = Index {
                    bytes: 256 * 1_040,
                    count: 256,
                    priority: 1,
                    first_recv_ms: 1_790_000_000_000 + f as i64 * 1_000,
                    last_seq: key + 255,
                };
                (key, Some(index))
            })
            .collect();
        let v = encode(&entries);
        assert_eq!(decode(&v).as_ref(), Some(&entries));
        assert!(v.len() <= 12 * 64 + 8, "{} bytes", v.len());
        assert_eq!(encode_fixed(&entries).len(), 38 * 64);
    }
}
