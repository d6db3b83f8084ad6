//! Open-time recovery: the in-memory batch map rebuilt from sled's index (`index.rs`, and
//! the per-file entries of buffers written before session 15) and
//! the batch files (durability steps 2 and 5 in the module docs).
//!
//! The rules never assume that sled recovered a *prefix* of its writes (see "sled's
//! recovery" in the module docs): a batch file is kept whenever it is complete and valid,
//! whatever `next_seq` says, and only a tombstone (a deletion whose index removal was
//! flushed) or damage removes one.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::catalog::Catalog;
use super::files::{self, Index};
use super::index::Groups;
use super::reap::TOMBSTONE;
use super::{BatchInfo, Error, Stats};

/// What the scan found.
pub(super) struct Scanned {
    pub(super) catalog: Catalog,
    /// At least the stored `next_seq`, above every recovered record.
    pub(super) next_seq: u64,
}

/// Rebuilds the batch map: indexed batches whose file has the indexed length are kept
/// (a longer file, appended to after its entry was stored, is re-indexed from its intact
/// prefix, which must cover the entry); tombstoned
/// batches are deleted (file unlinked, directory fsynced, then the tombstone removed);
/// an index entry without its intact file is damage (removed, counted); a file without
/// an index entry is re-indexed if every record in it reads back intact (a commit whose
/// index entries sled lost) and removed otherwise (a file cut short: a commit that never
/// completed, or garbage). Flushes sled only inside a rewrite of the index (between
/// removing the old groups and writing the new ones); the caller flushes at the end.
pub(super) fn scan(
    records: &sled::Tree,
    groups: &mut Groups,
    dir: &Path,
    stats: &Stats,
    next_seq: u64,
) -> Result<Scanned, Error> {
    let mut next_seq = next_seq;
    // The grouped entries (`index.rs`), then per-file entries of the `records` tree that
    // buffers written before session 15 hold (a key in both: the group's wins).
    let (mut entries, damaged) = groups.entries()?;
    // Whether the index needs rewriting (an open that finds everything as indexed
    // leaves it alone: rewriting every group of a large backlog left about 10 MB of
    // sled's memory behind).
    let mut changed = damaged > 0;
    if damaged > 0 {
        tracing::error!(
            groups = damaged,
            "damaged buffer index groups: their files are re-indexed from their contents"
        );
    }
    // Looked up in the sorted list (already in key order unless sled is damaged), not
    // in a set of every key: with a large backlog that set cost more memory at open
    // than the catalog holds afterwards.
    entries.sort_by_key(|(k, _)| *k);
    let grouped = entries.len();
    for item in records.iter() {
        let (k, v) = item?;
        let Some(key) = <[u8; 8]>::try_from(k.as_ref()).ok().map(u64::from_be_bytes) else {
            continue;
        };
        if entries[..grouped]
            .binary_search_by_key(&key, |(k, _)| *k)
            .is_ok()
        {
            continue;
        }
        changed = true;
        if v.as_ref() == TOMBSTONE {
            entries.push((key, None));
        } else if let Some(i) = Index::decode(&v) {
            entries.push((key, Some(i)));
        } else {
            tracing::error!(
                batch = key,
                "damaged buffer batch index entry: re-indexed from its file"
            );
        }
    }
    entries.sort_by_key(|(k, _)| *k);
    let mut tombstones = Vec::new();
    let mut live: Vec<(u64, Index)> = Vec::new();
    for (key, index) in entries {
        let Some(i) = index else {
            // A deletion interrupted after its tombstone was flushed.
            files::remove(dir, key)?;
            tombstones.push(key);
            changed = true;
            continue;
        };
        let looked = file_len(dir, key).and_then(|len| match len {
            Some(len) if len == i.bytes => Ok(Some(i)),
            // Appended to after sled last stored its entry (durability step 2): the
            // entry is rebuilt from the file, which must still hold what it counted.
            // Or a pre-sized file whose zeros were not cut yet (`spares.rs`): the
            // recovery cuts them and the entry stands.
            Some(len) if len > i.bytes => files::recover(dir, key)
                .map(|r| r.filter(|r| r.bytes >= i.bytes && r.count >= i.count)),
            _ => Ok(None),
        });
        let index = match looked {
            Ok(index) => index,
            Err(e) => {
                unreadable(dir, key, &e, stats)?;
                changed = true;
                continue;
            }
        };
        if let Some(r) = index.filter(|r| r.bytes > i.bytes) {
            changed = true;
            stats.recovered.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                batch = key,
                records = r.count,
                "buffer batch index rebuilt from its grown file"
            );
        }
        let Some(index) = index else {
            tracing::error!(
                batch = key,
                "buffer batch missing or damaged, skipped and removed"
            );
            stats.corrupt.fetch_add(1, Ordering::Relaxed);
            files::remove(dir, key)?;
            changed = true;
            continue;
        };
        live.push((key, index));
    }
    // `live` and `tombstones` are in key order so far.
    let indexed = live.len();
    let mut reindexed = 0u64;
    for key in files::list(dir)? {
        if live[..indexed]
            .binary_search_by_key(&key, |(k, _)| *k)
            .is_ok()
            || tombstones.binary_search(&key).is_ok()
        {
            continue;
        }
        let index = match files::recover(dir, key) {
            Ok(Some(index)) => index,
            Ok(None) => {
                tracing::warn!(batch = key, "incomplete buffer batch file removed");
                files::remove(dir, key)?;
                continue;
            }
            Err(e) => {
                unreadable(dir, key, &e, stats)?;
                continue;
            }
        };
        // One line per file at debug: an open that lost sled's index finds every file
        // here (200,000 in a 50 GB backlog); the count goes in one line below.
        tracing::debug!(
            batch = key,
            records = index.count,
            "buffer batch recovered from its file"
        );
        stats.recovered.fetch_add(1, Ordering::Relaxed);
        reindexed += 1;
        live.push((key, index));
        changed = true;
    }
    if reindexed > 0 {
        tracing::info!(
            files = reindexed,
            "buffer batches without an index entry recovered from their files"
        );
    }
    // The unlinks are durable before their tombstones go; then the index is written
    // afresh (group by group, see `Groups::rewrite`; only if anything differs from it)
    // and the per-file entries of older buffers dropped. A crash in between leaves files
    // without entries or both kinds of entries, which the next open reads again.
    if !tombstones.is_empty() {
        files::sync_dir(dir)?;
    }
    live.sort_by_key(|(k, _)| *k);
    if changed {
        groups.rewrite(&live)?;
        records.clear()?;
    }
    // The catalog is built in key order and paged as it grows, so an open holds no more
    // of it in memory than the edge does afterwards.
    let mut catalog = Catalog::new(groups.tree());
    for (key, index) in live {
        next_seq = next_seq.max(index.last_seq + 1);
        catalog.insert(key, BatchInfo::of(&index));
        catalog.trim(None, &BTreeSet::new());
    }
    Ok(Scanned { catalog, next_seq })
}

/// A batch file the open cannot read (an I/O error, or not a regular file): set aside
/// (`files::set_aside`), not deleted, and counted as corrupt. Deleting it (before
/// session 22) would have lost its records to a read error of the moment.
fn unreadable(dir: &Path, key: u64, cause: &std::io::Error, stats: &Stats) -> Result<(), Error> {
    stats.corrupt.fetch_add(1, Ordering::Relaxed);
    files::set_aside(dir, key, cause)?;
    Ok(())
}

/// The length of batch file `key`: `None` if it is gone, an error if it cannot be looked
/// at or is not a regular file.
fn file_len(dir: &Path, key: u64) -> std::io::Result<Option<u64>> {
    match files::path(dir, key).metadata() {
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        Ok(_) => Err(std::io::Error::other("not a regular file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
