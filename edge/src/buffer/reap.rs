//! Batch deletion (durability step 5 in the module docs): drained, evicted or unreadable
//! batches leave sled's index and the disk in an order that a crash at any point cannot
//! turn into a lost record or a resurrected one.
//!
//! 1. The index entry is replaced by a *tombstone* (`index.rs`), all keys of one round
//!    in one sled batch.
//! 2. sled is flushed and its log file fsynced: the tombstones are durable, and with them
//!    everything written before (the acknowledged watermarks the replicator wrote before
//!    releasing the records; sled flushes all trees at once).
//! 3. The files are unlinked (or recycled as spare files, see `spares.rs`) and the
//!    directory fsynced.
//! 4. The tombstones are removed, all of one round in one sled batch (unflushed: a lost
//!    removal only repeats step 3 at open).
//!
//! At open a tombstone means "delete this file", a file with neither an index entry nor
//! a tombstone is a commit whose index sled lost (kept if intact, see `recover`).
//! Unlinking before step 2 lost records on a kill: sled came back with the old
//! watermark and an in-flight descriptor whose records' file was gone (found by the
//! chaos test, 1 run in 10).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use super::{files, Error, Inner, Reap};

/// The value of a per-file entry in the `records` tree of buffers written before
/// session 15 that marks a batch being deleted (an index entry is never empty). Entries
/// are grouped now, with a tombstone state of their own (`index.rs`).
pub(super) const TOMBSTONE: &[u8] = &[];

/// Deletes batches `keys` (steps 1 to 4). A file that cannot be unlinked keeps its
/// tombstone (the next open retries).
pub(super) fn delete(inner: &Inner, keys: &[u64]) -> Result<(), Error> {
    if keys.is_empty() {
        return Ok(());
    }
    for k in keys {
        files::note(&inner.files, files::Step::Removed(*k));
    }
    inner.index().mark(keys)?;
    inner.flush_durable()?;
    files::note(&inner.files, files::Step::Flushed);
    let mut gone = Vec::with_capacity(keys.len());
    for k in keys {
        match files::retire(&inner.files, *k, &inner.spares) {
            Ok(bytes) => {
                inner.file_bytes.fetch_sub(bytes, Ordering::Relaxed);
                gone.push(*k);
            }
            Err(e) => {
                tracing::error!(batch = k, cause = %e, "removing a buffer batch file failed");
            }
        }
    }
    files::sync_dir(&inner.files)?;
    // One sled batch: sled writes each batch to its log as one piece.
    inner.index().remove(&gone)?;
    Ok(())
}

/// Least time between the starts of two deletion rounds. Each round costs a sled flush
/// (sled's `sync_file_range` on its I/O threads), an `fdatasync` and a directory `fsync`;
/// during a drain batches are released every few milliseconds, and a round per release
/// put those syncs on the same disk as the replicator's descriptor syncs and the cloud's.
/// Pacing rounds delays only when drained files leave the disk (the quota counts the
/// index, which is updated at release); a barrier (`Buffer::reaped`, close) is served at
/// once.
const ROUND_EVERY: Duration = Duration::from_millis(250);

/// The `buffer-reap` thread: deletes what it is sent, everything queued at once per
/// round (one flush, one directory fsync), at most one round per [`ROUND_EVERY`] unless
/// a barrier waits. Ends when the channel closes.
pub(super) fn reap_loop(inner: &Inner, rx: &Receiver<Reap>) {
    let mut last: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut keys = Vec::new();
        let mut barriers = Vec::new();
        sort(first, &mut keys, &mut barriers);
        let due = last.map(|t| t + ROUND_EVERY);
        loop {
            for r in rx.try_iter() {
                sort(r, &mut keys, &mut barriers);
            }
            let wait = due.map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if !barriers.is_empty() || wait.is_zero() {
                break;
            }
            match rx.recv_timeout(wait) {
                Ok(r) => sort(r, &mut keys, &mut barriers),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        last = Some(Instant::now());
        match delete(inner, &keys) {
            // Their index entries are tombstones or gone: a page-in cannot bring them back.
            Ok(()) => inner.lock().catalog.forget(&keys),
            Err(e) => tracing::error!(cause = %e, "deleting drained buffer batches failed"),
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

fn sort(r: Reap, keys: &mut Vec<u64>, barriers: &mut Vec<SyncSender<()>>) {
    match r {
        Reap::Batch(k) => keys.push(k),
        Reap::Barrier(done) => barriers.push(done),
    }
}
