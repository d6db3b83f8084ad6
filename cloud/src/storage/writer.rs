//! The group-commit writer: one thread owns every write to RocksDB.
//!
//! 1. Callers hand a [`WriteSet`] and a `durable` flag to the channel and await a oneshot.
//! 2. The thread takes the first pending request, then everything else already queued
//!    (up to [`MAX_GROUP_BYTES`]), and applies all of them as one RocksDB `WriteBatch`.
//! 3. Under `sync: group` the batch is written with `sync = true` when any request in it
//!    asked to be durable: many producers share one fsync of the WAL. Under `interval` a
//!    timer thread fsyncs the WAL every `sync_interval_ms` (while anything was written,
//!    step 6); under `none` RocksDB decides.
//! 4. Only then is every caller of the group answered, in submission order. A caller that
//!    assigned offsets before submitting therefore never sees a later write become
//!    visible before an earlier one.
//! 5. Writes that need no fsync (`sync: none` or `interval`, or a non-durable write under
//!    `group`) skip this thread: `Store::write_now` applies them on the caller's thread,
//!    and a partition only does so while none of its writes is queued here.
//! 6. Every write applied without an fsync marks the store *dirty*; under `group` a
//!    timer thread fsyncs the WAL every `storage.hybrid_flush_ms` while it is
//!    (`Store::flush_unsynced_every`): non-durable writes (hybrid topics, acks=1, MQTT
//!    QoS 0) reach the disk within that time even when no durable write follows.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::{Error, Op, SyncPolicy, WriteSet, CF_LOG, CF_META};

const MAX_GROUP_BYTES: usize = 32 << 20;

/// A RocksDB `WriteBatch`'s fixed header (sequence and count).
const BATCH_HEADER: usize = 12;

/// Upper bound of what a batch adds per operation beyond the key and value bytes that
/// `WriteSet::bytes` counts: a tag, a column family id and two length varints.
const OP_OVERHEAD: usize = 16;

pub(super) struct WriteReq {
    pub(super) set: WriteSet,
    pub(super) durable: bool,
    pub(super) done: oneshot::Sender<Result<(), Error>>,
    /// Decremented once the write is applied (or failed), even if nobody awaits `done`.
    pub(super) pending: Option<Arc<AtomicU32>>,
    /// Tests only: the thread waits on this until its sender drops before writing the
    /// group this request starts ([`super::Store::hold_writer`]).
    #[cfg(test)]
    pub(super) hold: Option<mpsc::Receiver<()>>,
}

pub(super) type Spawned = (mpsc::Sender<WriteReq>, thread::JoinHandle<()>);

/// Starts the writer thread. It ends (dropping its handle on the DB) once every sender
/// is dropped and the queue is drained.
pub(super) fn spawn(
    db: Arc<DB>,
    policy: SyncPolicy,
    dirty: Arc<AtomicBool>,
) -> Result<Spawned, Error> {
    let (tx, rx) = mpsc::channel::<WriteReq>();
    let wdb = db.clone();
    let dirty_for_flusher = dirty.clone();
    let handle = thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(wdb, policy, rx, &dirty))
        .map_err(|e| Error::Backend(format!("spawn writer: {e}")))?;
    if let SyncPolicy::Interval(every) = policy {
        // Under `interval` every write is applied without an fsync and marks `dirty`.
        spawn_flusher(&db, dirty_for_flusher, every)?;
    }
    Ok((tx, handle))
}

/// Starts the thread that fsyncs the WAL every `every` while `dirty` (`sync: interval`,
/// and under `group` `Store::flush_unsynced_every`).
pub(super) fn spawn_flusher(
    db: &Arc<DB>,
    dirty: Arc<AtomicBool>,
    every: Duration,
) -> Result<(), Error> {
    let weak = Arc::downgrade(db);
    thread::Builder::new()
        .name("store-wal-sync".into())
        .spawn(move || flush_unsynced(weak, dirty, every))
        .map(drop)
        .map_err(|e| Error::Backend(format!("spawn wal sync: {e}")))
}

/// Fsyncs the WAL every `every` while writes applied without an fsync are unsynced.
fn flush_unsynced(db: std::sync::Weak<DB>, dirty: Arc<AtomicBool>, every: Duration) {
    loop {
        thread::sleep(every);
        let Some(db) = db.upgrade() else { return };
        if dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = db.flush_wal(true) {
                dirty.store(true, Ordering::Release);
                warn!(cause = %e, "periodic wal sync failed");
            }
        }
    }
}

fn run(db: Arc<DB>, policy: SyncPolicy, rx: mpsc::Receiver<WriteReq>, dirty: &AtomicBool) {
    while let Ok(first) = rx.recv() {
        #[cfg(test)]
        if let Some(hold) = &first.hold {
            let _ = hold.recv();
        }
        let mut group = vec![first];
        let mut bytes = group[0].set.bytes;
        while bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(req) => {
                    bytes += req.set.bytes;
                    group.push(req);
                }
                Err(_) => break,
            }
        }
        let sync = group.iter().any(|r| r.durable) && policy == SyncPolicy::Group;
        if !sync {
            dirty.store(true, Ordering::Release);
        }
        let result = apply(&db, &mut group, sync);
        for req in group {
            if let Some(p) = &req.pending {
                p.fetch_sub(1, Ordering::AcqRel);
            }
            let _ = req.done.send(result.clone());
        }
    }
}

fn apply(db: &DB, group: &mut [WriteReq], sync: bool) -> Result<(), Error> {
    write_sets(db, group.iter_mut().map(|r| &mut r.set), sync)
}

/// Applies one set on the caller's thread without an fsync (see `Store::write_now`).
pub(super) fn apply_now(db: &DB, set: &mut WriteSet, dirty: &AtomicBool) -> Result<(), Error> {
    dirty.store(true, Ordering::Release);
    write_sets(db, std::iter::once(set), false)
}

fn write_sets<'a>(
    db: &DB,
    sets: impl Iterator<Item = &'a mut WriteSet>,
    sync: bool,
) -> Result<(), Error> {
    let (Some(log), Some(meta)) = (db.cf_handle(CF_LOG), db.cf_handle(CF_META)) else {
        return Err(Error::Backend("column family missing".into()));
    };
    // Sized up front: a batch that grows as it goes copies its contents at every doubling
    // (14 of this thread's 89 perf samples in a 1 GB edge drain were that copying).
    let sets: Vec<&mut WriteSet> = sets.collect();
    let capacity = sets
        .iter()
        .map(|s| s.bytes + s.ops.len() * OP_OVERHEAD)
        .sum::<usize>();
    let mut batch = WriteBatch::with_capacity_bytes(BATCH_HEADER + capacity);
    for set in sets {
        for op in set.ops.drain(..) {
            match op {
                Op::PutLog(k, v) => batch.put_cf(log, k, v),
                Op::DeleteLog(k) => batch.delete_cf(log, k),
                Op::DeleteLogRange(a, b) => batch.delete_range_cf(log, a, b),
                Op::PutMeta(k, v) => batch.put_cf(meta, k, v),
                Op::DeleteMeta(k) => batch.delete_cf(meta, k),
                Op::DeleteMetaRange(a, b) => batch.delete_range_cf(meta, a, b),
            }
        }
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(sync);
    db.write_opt(batch, &opts).map_err(|e| {
        error!(cause = %e, "rocksdb write failed");
        Error::Backend(e.to_string())
    })
}
