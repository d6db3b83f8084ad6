//! Open-time recovery: the in-memory batch map rebuilt from sled's `records` index and
//! the batch files (durability steps 2 and 5 in the module docs).
//!
//! The rules never assume that sled recovered a *prefix* of its writes (see "sled's
//! recovery" in the module docs): a batch file is kept whenever it is complete and valid,
//! whatever `next_seq` says, and only a tombstone (a deletion whose index removal was
//! flushed) or damage removes one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;

use super::files::{self, Index};
use super::reap::TOMBSTONE;
use super::{BatchInfo, Error, Stats};

/// What the scan found.
pub(super) struct Scanned {
    pub(super) batches: BTreeMap<u64, BatchInfo>,
    pub(super) by_priority: BTreeMap<u8, BTreeSet<u64>>,
    pub(super) stored_bytes: u64,
    pub(super) live_records: u64,
    /// At least the stored `next_seq`, above every recovered record.
    pub(super) next_seq: u64,
}

impl Scanned {
    fn add(&mut self, key: u64, index: &Index) {
        self.next_seq = self.next_seq.max(index.last_seq + 1);
        self.by_priority
            .entry(index.priority)
            .or_default()
            .insert(key);
        self.stored_bytes += index.bytes;
        self.live_records += u64::from(index.count);
        self.batches.insert(key, BatchInfo::of(index));
    }
}

/// Rebuilds the batch map: indexed batches whose file has the indexed length are kept
/// (a longer file, appended to after its entry was stored, is re-indexed from its intact
/// prefix, which must cover the entry); tombstoned
/// batches are deleted (file unlinked, directory fsynced, then the tombstone removed);
/// an index entry without its intact file is damage (removed, counted); a file without
/// an index entry is re-indexed if every record in it reads back intact (a commit whose
/// index entries sled lost) and removed otherwise (a file cut short: a commit that never
/// completed, or garbage). Leaves sled unflushed; the caller flushes.
pub(super) fn scan(
    records: &sled::Tree,
    dir: &Path,
    stats: &Stats,
    next_seq: u64,
) -> Result<Scanned, Error> {
    let mut out = Scanned {
        batches: BTreeMap::new(),
        by_priority: BTreeMap::new(),
        stored_bytes: 0,
        live_records: 0,
        next_seq,
    };
    let mut tombstones = Vec::new();
    for item in records.iter() {
        let (k, v) = item?;
        let key = <[u8; 8]>::try_from(k.as_ref()).map(u64::from_be_bytes).ok();
        if let (Some(key), true) = (key, v.as_ref() == TOMBSTONE) {
            // A deletion interrupted after its index removal was flushed.
            files::remove(dir, key)?;
            tombstones.push(key);
            continue;
        }
        let index = key.and_then(|key| Index::decode(&v).map(|i| (key, i)));
        let len = index
            .as_ref()
            .and_then(|(key, _)| files::path(dir, *key).metadata().ok().map(|m| m.len()));
        let index = match (index, len) {
            (Some((key, i)), Some(len)) if len == i.bytes => Some((key, i)),
            // Appended to after sled last stored its entry (durability step 2): the
            // entry is rebuilt from the file, which must still hold what it counted.
            (Some((key, i)), Some(len)) if len > i.bytes => files::recover(dir, key)
                .filter(|r| r.bytes >= i.bytes && r.count >= i.count)
                .map(|r| {
                    stats.recovered.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        batch = key,
                        records = r.count,
                        "buffer batch index rebuilt from its grown file"
                    );
                    records.insert(k.clone(), &r.encode()).map(|_| (key, r))
                })
                .transpose()?,
            _ => None,
        };
        let Some((key, index)) = index else {
            tracing::error!(batch = ?key, "buffer batch missing or damaged, skipped and removed");
            stats.corrupt.fetch_add(1, Ordering::Relaxed);
            records.remove(&k)?;
            if let Some(key) = key {
                files::remove(dir, key)?;
            }
            continue;
        };
        out.add(key, &index);
    }
    let mut recovered = sled::Batch::default();
    for key in files::list(dir)? {
        if out.batches.contains_key(&key) || tombstones.contains(&key) {
            continue;
        }
        let Some(index) = files::recover(dir, key) else {
            tracing::warn!(batch = key, "incomplete buffer batch file removed");
            files::remove(dir, key)?;
            continue;
        };
        tracing::info!(
            batch = key,
            records = index.count,
            "buffer batch recovered from its file"
        );
        stats.recovered.fetch_add(1, Ordering::Relaxed);
        recovered.insert(&key.to_be_bytes(), &index.encode());
        out.add(key, &index);
    }
    records.apply_batch(recovered)?;
    if !tombstones.is_empty() {
        // The unlinks are durable before their tombstones go.
        files::sync_dir(dir)?;
        for key in tombstones {
            records.remove(key.to_be_bytes())?;
        }
    }
    Ok(out)
}
