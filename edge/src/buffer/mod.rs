//! The edge's durable store-and-forward buffer on sled 0.34.7.
//!
//! # On-disk layout
//!
//! `buffer.dir` holds a sled database and a `batches/` directory:
//!
//! - `batches/<key>.batch`: one *batch* of records in arrival order per file (see
//!   [`record`] for the byte layout, a CRC per record), named by its first record's
//!   sequence (20 decimal digits). Every batch holds records of one priority class only,
//!   so a quota eviction removes whole files. Payloads live in files, not in sled,
//!   because sled 0.34 keeps large values resident whatever its `cache_capacity`
//!   (measured here: 6,000 x 64 KB values -> 307 MB RSS; with files: 7 MB), and because
//!   unlinking a drained file returns its space at once (sled's FIFO space amplification
//!   is design.md section 6). A batch file is self-describing (every record carries its
//!   sequence, priority and receive time under its CRC), so its index entry can be
//!   rebuilt from it.
//! - sled tree `records`: key = the batch key (u64, big-endian), value = a 29-byte index
//!   entry (file length, record count, priority, first receive time, last sequence), so
//!   opening the buffer reads only the files committed after sled's last flush.
//! - sled tree `meta`: `next_seq` (the sequence counter; sequences are never wall-clock)
//!   and the uplink state owned by the replicator ([`uplink`]): the idempotent producer
//!   id/epoch, per partition the next producer sequence and the highest acknowledged
//!   record sequence, and an *in-flight descriptor* for every Produce batch sent but not
//!   yet acknowledged; during a live-first drain also `live_from` (the boundary sequence;
//!   no batch file holds records from both sides of it) and per partition the
//!   acknowledged sequence of the backlog records below it.
//!
//! # Write path and durability, in order
//!
//! 1. The MQTT ingest hands a publish to [`Buffer::append`]; it gets the next sequence and
//!    joins the open in-memory batch of its priority class. Nothing is on disk yet. At
//!    most `4 x batch_max_bytes` (at least 1 MiB) wait in memory; further appends wait
//!    for the committer (memory stays bounded whatever the ingest rate).
//! 2. The committer thread cuts the open batches (at `batch_max_bytes`) into batch files.
//!    With `sync: always` it does so as soon as records arrive and then, in the same
//!    round, fsyncs every file (`fdatasync`) and the directory, then inserts the index
//!    entries and `next_seq` into sled **without** flushing sled. That is the group
//!    commit: one round of fsyncs (each new file, then the directory) for all records
//!    that arrived meanwhile. With `sync: interval` a batch that fills up is written at
//!    once (no fsync; not yet visible to the replicator) and every `sync_interval` (or
//!    after 128 such files) all written files are fsynced, the directory fsynced and
//!    the files indexed together. sled itself is flushed at most once a second by the
//!    committer (and by every step below that flushes); an index entry lost with sled's
//!    unflushed writes is rebuilt at open from its file (see below).
//! 3. After the directory fsync returns, the committed generation advances and waiters
//!    wake. With `sync: always` the ingest withholds the MQTT PUBACK of a QoS 1/2 publish
//!    until this point, so **an acknowledged QoS 1/2 publish survives a process kill and
//!    a power cut**. With `sync: interval` the PUBACK goes out at step 1, and a kill or
//!    power cut loses the acknowledged records of at most the last interval (a kill
//!    usually loses only the open batches: written files are recovered at open).
//! 4. The replicator reads batches in key order, assigns per-partition producer sequences
//!    and persists an in-flight descriptor, flushed *before* sending, so a restarted edge
//!    re-sends exactly the same batches and the broker's idempotence drops duplicates.
//! 5. When the broker acknowledges, the replicator records the partition's acknowledged
//!    sequence and deletes the descriptor (one atomic sled batch), then releases the
//!    records; a batch is deleted only when every record in it is released, by the
//!    `buffer-reap` thread (the replicator never waits for it): index entries removed,
//!    sled flushed (which also makes the acknowledged watermarks durable), then the file
//!    unlinked. A crash before that flush replays records that the acknowledged-sequence
//!    watermark (or the broker's idempotence) then skips.
//!
//! What survives a crash: every batch fsynced at step 2, the producer state and every
//! descriptor. What is lost: open batches (step 1). At open, a file without an index entry
//! is recovered if its key is at or above the flushed `next_seq` (a commit whose index
//! entries sled had not flushed; a commit writes its index entries before `next_seq` and
//! sled recovers a prefix of its writes, so such a key cannot belong to a deleted batch)
//! and every record in it reads back intact, and removed otherwise (a commit cut short,
//! or a deletion whose index removal was flushed before the kill hit the unlink). Every
//! deletion (drained batch, quota eviction, unreadable batch) removes the index entry,
//! flushes sled, then unlinks the file, so an index entry whose file is missing or
//! truncated is real damage: removed and counted as corrupt; a record whose CRC fails is
//! skipped and counted when read; none of these stops the edge.
//!
//! # Quota
//!
//! `quota_bytes` bounds the encoded bytes of committed plus open batches. When an append
//! does not fit, `full_policy` applies by priority class: `drop_oldest` evicts the oldest
//! batch of the lowest class not above the new record's class, `drop_newest` evicts the
//! newest batch of a class strictly below it, else refuses the new record; `block` makes
//! the append wait for the replicator to free space. Batches the replicator already read
//! are never evicted. Every dropped record is counted by reason. An evicted batch leaves
//! the quota at once; its file is deleted by the `buffer-reap` thread (index removal,
//! flush, unlink), off the append path.

mod commit;
mod files;
mod quota;
mod read;
pub mod record;
pub mod uplink;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use commit::{commit_loop, commit_once};
use files::Index;
use quota::{remove_batch, victim};

pub use read::ReadBatch;
pub use record::{Props, Record};

/// Errors of the buffer layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sled failed.
    #[error("buffer storage: {0}")]
    Backend(#[from] sled::Error),
    /// The buffer is shutting down.
    #[error("buffer closed")]
    Closed,
    /// A stored meta value is malformed.
    #[error("corrupt buffer metadata: {0}")]
    Corrupt(&'static str),
    /// A batch file could not be written, read or removed.
    #[error("buffer file: {0}")]
    Io(#[from] std::io::Error),
}

/// What to do when the quota is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Wait for space (backpressure to publishers).
    Block,
    /// Evict the oldest records of the lowest priority class.
    DropOldest,
    /// Refuse the newest records (or evict newer lower-priority ones).
    DropNewest,
}

/// When the committer fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Commit and fsync as soon as records arrive (group commit); acks wait for it.
    Always,
    /// Commit and fsync every interval; acks do not wait.
    Interval(Duration),
}

/// Buffer settings.
#[derive(Debug, Clone)]
pub struct BufferConfig {
    /// sled directory.
    pub dir: PathBuf,
    /// Byte quota on buffered records.
    pub quota_bytes: u64,
    /// Policy when full.
    pub full_policy: FullPolicy,
    /// Sync policy.
    pub sync: SyncPolicy,
    /// Largest batch per sled value.
    pub batch_max_bytes: usize,
    /// sled page cache capacity.
    pub cache_bytes: u64,
}

/// Drop reasons, used as metric labels.
pub const DROP_REASONS: [&str; 3] = ["drop_oldest", "drop_newest", "too_large"];

/// Counters read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records appended.
    pub appended: AtomicU64,
    /// Payload+metadata bytes appended.
    pub appended_bytes: AtomicU64,
    /// Dropped records by reason, indexed like [`DROP_REASONS`].
    pub dropped: [AtomicU64; 3],
    /// Corrupt records (or unreadable batches) skipped.
    pub corrupt: AtomicU64,
    /// Group commits (fsyncs).
    pub commits: AtomicU64,
    /// Batches whose index entry the last open rebuilt from the file (committed after
    /// sled's last flush).
    pub recovered: AtomicU64,
}

/// A point-in-time view of the backlog.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Records not yet acknowledged by the cloud (committed + open).
    pub records: u64,
    /// Bytes counted against the quota.
    pub bytes: u64,
    /// Receive time of the oldest buffered record, ms since the epoch.
    pub oldest_recv_ms: Option<i64>,
}

/// Proof of an append; pass to [`Buffer::wait_durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this commit generation.
    Stored(u64),
    /// Dropped by the quota policy (already counted).
    Dropped,
}

#[derive(Debug)]
struct BatchInfo {
    live: u32,
    bytes: u64,
    priority: u8,
    first_recv_ms: i64,
}

impl BatchInfo {
    /// A fully live batch as its sled index entry describes it.
    fn of(index: &files::Index) -> BatchInfo {
        BatchInfo {
            live: index.count,
            bytes: index.bytes,
            priority: index.priority,
            first_recv_ms: index.first_recv_ms,
        }
    }
}

#[derive(Default)]
struct Open {
    records: Vec<Record>,
    bytes: u64,
}

struct State {
    next_seq: u64,
    open: BTreeMap<u8, Open>,
    open_bytes: u64,
    /// Bytes of batch files written but not yet fsynced and indexed (`sync: interval`).
    staged_bytes: u64,
    gen: u64,
    committed_gen: u64,
    batches: BTreeMap<u64, BatchInfo>,
    by_priority: BTreeMap<u8, BTreeSet<u64>>,
    stored_bytes: u64,
    live_records: u64,
    /// Records taken out of `open` by a commit that has not registered them yet.
    committing: u64,
    /// Batches with keys at or below this were handed to the replicator.
    claimed: Option<u64>,
    /// Live-first drain in progress: records from this sequence on are "live" and no
    /// batch file holds records from both sides of it (see [`Buffer::start_live`]).
    live_from: Option<u64>,
    shutdown: bool,
    failed: Option<String>,
    /// The committer waits for work (appends wake it only then).
    committer_idle: bool,
}

struct Inner {
    /// Directory of batch files.
    files: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
    cfg: BufferConfig,
    state: Mutex<State>,
    /// Space freed, open batches taken by the committer, shutdown: wakes appends waiting
    /// for space (`block`) or for the committer (memory bound).
    changed: Condvar,
    /// Wakes the committer: records to commit (`sync: always` or a full batch), shutdown.
    work: Condvar,
    /// A group commit finished (or failed), shutdown: wakes [`Buffer::wait_durable`].
    durable: Condvar,
    stats: Stats,
    /// Serialises group commits so `committed_gen` only covers flushed records.
    commit_lock: Mutex<Vec<commit::Staged>>,
    /// Wakes the replicator after each commit.
    on_commit: Arc<tokio::sync::Notify>,
    /// Drained batches for the reaper thread to delete (index entry, then file), so the
    /// replicator never waits for an unlink.
    reap: Mutex<Option<std::sync::mpsc::Sender<Reap>>>,
}

/// Work for the reaper thread.
enum Reap {
    /// Delete this drained batch.
    Batch(u64),
    /// Answer once everything queued before is deleted.
    Barrier(std::sync::mpsc::SyncSender<()>),
}

/// The buffer. Cheap to share through `Arc`.
pub struct Buffer {
    inner: Arc<Inner>,
    committer: Mutex<Option<JoinHandle<()>>>,
    reaper: Mutex<Option<JoinHandle<()>>>,
}

const NEXT_SEQ: &[u8] = b"next_seq";

impl State {
    /// Bytes counted against the quota: committed, staged and open batches.
    fn used_bytes(&self) -> u64 {
        self.stored_bytes + self.staged_bytes + self.open_bytes
    }
}

impl Inner {
    /// Open (uncommitted) bytes above which appends wait for the committer.
    fn open_limit(&self) -> u64 {
        (self.cfg.batch_max_bytes as u64)
            .saturating_mul(4)
            .max(1 << 20)
    }

    /// Deletes a batch: index entry removed and flushed, then its file unlinked (a crash
    /// in between leaves an orphan file that the next open removes; unlinking first would
    /// leave an index entry without its file, counted as corrupt at open).
    fn delete_batch(&self, key: u64) -> Result<(), Error> {
        self.records.remove(key.to_be_bytes())?;
        files::note(&self.files, files::Step::Removed(key));
        self.records.flush()?;
        files::note(&self.files, files::Step::Flushed);
        files::remove(&self.files, key)?;
        Ok(())
    }

    /// Wakes the committer if it waits for work.
    fn wake_committer(&self, s: &mut State) {
        if s.committer_idle {
            s.committer_idle = false;
            self.work.notify_one();
        }
    }

    /// Hands a drained batch (already out of the state) to the reaper; deletes it here if
    /// the reaper is gone.
    fn reap(&self, key: u64) -> Result<(), Error> {
        let sent = match &*self.reap.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.send(Reap::Batch(key)).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            self.delete_batch(key)
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Buffer {
    /// Opens (or creates) the buffer, scanning the stored batches.
    pub fn open(cfg: BufferConfig) -> Result<Self, Error> {
        let db = sled::Config::new()
            .path(&cfg.dir)
            .cache_capacity(cfg.cache_bytes)
            .flush_every_ms(None)
            .open()?;
        let records = db.open_tree("records")?;
        let meta = db.open_tree("meta")?;
        let stats = Stats::default();
        let mut next_seq = match meta.get(NEXT_SEQ)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::Corrupt("next_seq"))?,
            ),
            None => 0,
        };
        let flushed_next_seq = next_seq;
        let live_from = match meta.get(uplink::LIVE_FROM)? {
            Some(v) => Some(u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::Corrupt("live_from"))?,
            )),
            None => None,
        };
        let files_dir = cfg.dir.join("batches");
        std::fs::create_dir_all(&files_dir)?;
        let mut batches = BTreeMap::new();
        let mut by_priority: BTreeMap<u8, BTreeSet<u64>> = BTreeMap::new();
        let (mut stored_bytes, mut live_records) = (0, 0);
        for item in records.iter() {
            let (k, v) = item?;
            let key = <[u8; 8]>::try_from(k.as_ref()).map(u64::from_be_bytes).ok();
            let index = key.and_then(|key| Index::decode(&v).map(|i| (key, i)));
            let present = index.as_ref().is_some_and(|(key, i)| {
                files::path(&files_dir, *key)
                    .metadata()
                    .is_ok_and(|m| m.len() == i.bytes)
            });
            let Some((key, index)) = index.filter(|_| present) else {
                tracing::error!(batch = ?key, "buffer batch missing or damaged, skipped and removed");
                stats.corrupt.fetch_add(1, Ordering::Relaxed);
                records.remove(&k)?;
                if let Some(key) = key {
                    files::remove(&files_dir, key)?;
                }
                continue;
            };
            next_seq = next_seq.max(index.last_seq + 1);
            by_priority.entry(index.priority).or_default().insert(key);
            stored_bytes += index.bytes;
            live_records += u64::from(index.count);
            batches.insert(key, BatchInfo::of(&index));
        }
        // A file without an index entry is either a batch committed after sled's last
        // flush (its key is at or above the flushed `next_seq`: the index entries of a
        // commit are written before its `next_seq`, sled recovers a prefix of its writes)
        // or one whose deletion was flushed before the unlink (key below it).
        let mut recovered = sled::Batch::default();
        for key in files::list(&files_dir)? {
            if batches.contains_key(&key) {
                continue;
            }
            let index = (key >= flushed_next_seq)
                .then(|| files::recover(&files_dir, key))
                .flatten();
            let Some(index) = index else {
                files::remove(&files_dir, key)?;
                continue;
            };
            tracing::info!(
                batch = key,
                records = index.count,
                "buffer batch recovered from its file"
            );
            stats.recovered.fetch_add(1, Ordering::Relaxed);
            recovered.insert(&key.to_be_bytes(), &index.encode());
            next_seq = next_seq.max(index.last_seq + 1);
            by_priority.entry(index.priority).or_default().insert(key);
            stored_bytes += index.bytes;
            live_records += u64::from(index.count);
            batches.insert(key, BatchInfo::of(&index));
        }
        records.apply_batch(recovered)?;
        meta.insert(NEXT_SEQ, &next_seq.to_be_bytes())?;
        db.flush()?;
        let state = State {
            next_seq,
            open: BTreeMap::new(),
            open_bytes: 0,
            staged_bytes: 0,
            gen: 0,
            committed_gen: 0,
            batches,
            by_priority,
            stored_bytes,
            live_records,
            committing: 0,
            claimed: None,
            live_from,
            shutdown: false,
            failed: None,
            committer_idle: false,
        };
        let (reap_tx, reap_rx) = std::sync::mpsc::channel();
        let (reap_tree, reap_dir) = (records.clone(), files_dir.clone());
        let reaper = std::thread::Builder::new()
            .name("buffer-reap".into())
            .spawn(move || reap_loop(&reap_tree, &reap_dir, &reap_rx))
            .map_err(|e| Error::Backend(sled::Error::Io(e)))?;
        let inner = Arc::new(Inner {
            reap: Mutex::new(Some(reap_tx)),
            files: files_dir,
            db,
            records,
            meta,
            cfg,
            state: Mutex::new(state),
            changed: Condvar::new(),
            work: Condvar::new(),
            durable: Condvar::new(),
            stats,
            commit_lock: Mutex::new(Vec::new()),
            on_commit: Arc::new(tokio::sync::Notify::new()),
        });
        let worker = inner.clone();
        let committer = std::thread::Builder::new()
            .name("buffer-commit".into())
            .spawn(move || commit_loop(&worker))
            .map_err(|e| Error::Backend(sled::Error::Io(e)))?;
        Ok(Buffer {
            inner,
            committer: Mutex::new(Some(committer)),
            reaper: Mutex::new(Some(reaper)),
        })
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Whether an append would currently wait for the committer (memory bound) or for
    /// space (`block`); callers on an async executor then append via `block_in_place`.
    pub fn congested(&self) -> bool {
        let s = self.inner.lock();
        s.open_bytes >= self.inner.open_limit()
            || (self.inner.cfg.full_policy == FullPolicy::Block
                && s.used_bytes() >= self.inner.cfg.quota_bytes)
    }

    /// Notified after every group commit (and release), for the replicator.
    pub fn on_commit(&self) -> Arc<tokio::sync::Notify> {
        self.inner.on_commit.clone()
    }

    /// The configured sync policy.
    pub fn sync_policy(&self) -> SyncPolicy {
        self.inner.cfg.sync
    }

    /// Backlog view for metrics.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.inner.lock();
        let open_records: u64 = s.open.values().map(|o| o.records.len() as u64).sum();
        let oldest_open = s
            .open
            .values()
            .filter_map(|o| o.records.first())
            .map(|r| r.recv_ms)
            .min();
        let oldest_stored = s.batches.values().map(|b| b.first_recv_ms).min();
        Snapshot {
            records: s.live_records + open_records + s.committing,
            bytes: s.used_bytes(),
            oldest_recv_ms: match (oldest_open, oldest_stored) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// Appends a record (its `seq` is assigned here). May block under `full_policy: block`.
    pub fn append(&self, rec: Record) -> Result<Appended, Error> {
        self.append_locked(self.inner.lock(), rec).1
    }

    /// Appends records in order under one lock (one call per MQTT read), pushing one
    /// [`Appended`] per record to `out`. May block under `full_policy: block`.
    pub fn append_all(
        &self,
        recs: impl IntoIterator<Item = Record>,
        out: &mut Vec<Appended>,
    ) -> Result<(), Error> {
        let mut s = self.inner.lock();
        for rec in recs {
            let (guard, result) = self.append_locked(s, rec);
            s = guard;
            out.push(result?);
        }
        Ok(())
    }

    /// One append under the state lock (given back, as waiting releases it).
    fn append_locked<'a>(
        &'a self,
        mut s: MutexGuard<'a, State>,
        mut rec: Record,
    ) -> (MutexGuard<'a, State>, Result<Appended, Error>) {
        let inner = &self.inner;
        let size = rec.encoded_len() as u64 + 8;
        let quota = inner.cfg.quota_bytes;
        if size > quota {
            inner.stats.dropped[2].fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %rec.topic, size, "record larger than the buffer quota dropped");
            return (s, Ok(Appended::Dropped));
        }
        while s.used_bytes() + size > quota {
            if s.shutdown {
                return (s, Err(Error::Closed));
            }
            let victim = match inner.cfg.full_policy {
                FullPolicy::Block => {
                    inner.wake_committer(&mut s);
                    s = inner.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                FullPolicy::DropOldest => victim(&s, rec.priority, true),
                FullPolicy::DropNewest => {
                    victim(&s, rec.priority.saturating_sub(1), false).filter(|_| rec.priority > 0)
                }
            };
            let reason = usize::from(inner.cfg.full_policy == FullPolicy::DropNewest);
            match victim {
                Some(key) => {
                    let info = remove_batch(&mut s, key);
                    // Index removal flushed before the unlink, off this lock (the reaper).
                    if let Err(e) = inner.reap(key) {
                        return (s, Err(e));
                    }
                    inner.stats.dropped[reason].fetch_add(u64::from(info.live), Ordering::Relaxed);
                }
                None => {
                    inner.stats.dropped[reason].fetch_add(1, Ordering::Relaxed);
                    return (s, Ok(Appended::Dropped));
                }
            }
        }
        // Backpressure: at most a few batches wait in memory for the committer.
        while s.open_bytes >= inner.open_limit() && !s.shutdown {
            inner.wake_committer(&mut s);
            s = inner.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        rec.seq = s.next_seq;
        s.next_seq += 1;
        inner.stats.appended.fetch_add(1, Ordering::Relaxed);
        inner
            .stats
            .appended_bytes
            .fetch_add(size, Ordering::Relaxed);
        let open = s.open.entry(rec.priority).or_default();
        open.records.push(rec);
        open.bytes += size;
        let full = open.bytes >= inner.cfg.batch_max_bytes as u64;
        s.open_bytes += size;
        s.gen += 1;
        let gen = s.gen;
        if full || inner.cfg.sync == SyncPolicy::Always {
            inner.wake_committer(&mut s);
        }
        (s, Ok(Appended::Stored(gen)))
    }

    /// Waits until the append with generation `gen` is committed and flushed.
    pub fn wait_durable(&self, gen: u64) -> Result<(), Error> {
        let mut s = self.inner.lock();
        while s.committed_gen < gen {
            if let Some(why) = &s.failed {
                tracing::error!(cause = %why, "buffer commit failed");
                return Err(Error::Closed);
            }
            if s.shutdown {
                return Err(Error::Closed);
            }
            s = self
                .inner
                .durable
                .wait(s)
                .unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    /// Commits the open (and written, `sync: interval`) batches now: returns once they are
    /// fsynced and indexed.
    pub fn commit(&self) -> Result<(), Error> {
        commit_once(&self.inner, true)?;
        Ok(())
    }

    /// Waits until every drained batch released so far is deleted (index entry and file).
    pub fn reaped(&self) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let sent = match &*self.inner.reap.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reap) => reap.send(Reap::Barrier(tx)).is_ok(),
            None => false,
        };
        if sent {
            let _ = rx.recv();
        }
    }

    /// Graceful shutdown: commits open batches, deletes drained ones, flushes, stops the
    /// committer.
    pub fn close(&self) -> Result<(), Error> {
        self.commit()?;
        self.reaped();
        self.stop();
        self.inner.db.flush()?;
        Ok(())
    }

    fn stop(&self) {
        self.inner.lock().shutdown = true;
        self.inner.changed.notify_all();
        self.inner.work.notify_all();
        self.inner.durable.notify_all();
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        // Closing the channel ends the reaper after the deletions queued so far; join it
        // so its handle on sled is gone before anyone reopens the directory.
        drop(
            self.inner
                .reap
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let reaper = self.reaper.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = reaper {
            let _ = h.join();
        }
    }

    /// Bytes on disk: sled (index, metadata) plus the batch files.
    pub fn disk_bytes(&self) -> u64 {
        let files: u64 = std::fs::read_dir(&self.inner.files)
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        self.inner.db.size_on_disk().unwrap_or(0) + files
    }
}

/// Deletes drained batches: index entries first (one sled batch for everything queued),
/// then one sled flush, then the files. The flush makes the index removals durable, and
/// with them the acknowledged watermarks the replicator wrote before releasing the
/// records (sled flushes all trees at once). Unlinking before that flush lost records on
/// a kill: sled came back with the old watermark and an in-flight descriptor whose
/// records' file was gone (found by the chaos test, 1 run in 10). A crash before the
/// flush replays the batch; the acknowledged watermark or the broker's idempotence drops
/// the duplicates. Ends when the buffer is dropped.
fn reap_loop(records: &sled::Tree, dir: &std::path::Path, rx: &std::sync::mpsc::Receiver<Reap>) {
    while let Ok(first) = rx.recv() {
        let mut keys = Vec::new();
        let mut barriers = Vec::new();
        for r in std::iter::once(first).chain(rx.try_iter()) {
            match r {
                Reap::Batch(k) => keys.push(k),
                Reap::Barrier(done) => barriers.push(done),
            }
        }
        let mut batch = sled::Batch::default();
        for k in &keys {
            batch.remove(&k.to_be_bytes());
            files::note(dir, files::Step::Removed(*k));
        }
        match records
            .apply_batch(batch)
            .and_then(|()| records.flush().map(drop))
        {
            Ok(()) => {
                files::note(dir, files::Step::Flushed);
                for k in keys {
                    if let Err(e) = files::remove(dir, k) {
                        tracing::error!(batch = k, cause = %e, "removing a drained batch file failed");
                    }
                }
            }
            Err(e) => tracing::error!(cause = %e, "deleting drained buffer batches failed"),
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

impl Drop for Buffer {
    /// Stops the committer without committing open batches (what a crash would lose).
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
