//! The edge's durable store-and-forward buffer on sled 0.34.7.
//!
//! # On-disk layout
//!
//! `buffer.dir` holds a sled database and a `batches/` directory:
//!
//! - `batches/<key>.batch`: one *batch* of records in arrival order per file (see
//!   [`record`] for the byte layout, a CRC per record), named by its first record's
//!   sequence (20 decimal digits), as one or more *segments* (one per group commit that
//!   wrote to the file, step 2). Every batch holds records of one priority class only,
//!   so a quota eviction removes whole files. Payloads live in files, not in sled,
//!   because sled 0.34 keeps large values resident whatever its `cache_capacity`
//!   (measured here: 6,000 x 64 KB values -> 307 MB RSS; with files: 7 MB), and because
//!   unlinking a drained file returns its space at once (sled's FIFO space amplification
//!   is design.md section 6). A batch file is self-describing (every record carries its
//!   sequence, priority and receive time under its CRC), so its index entry can be
//!   rebuilt from it.
//! - `batches/<id>.spare`: *spare* files (`spares.rs`). A new batch file is a spare
//!   renamed to its name (a file is created only when none is ready), and a drained
//!   batch file is renamed to a spare instead of unlinked, up to 64 spares (with
//!   `sync: always` it keeps its blocks and old records, see below; otherwise it is
//!   truncated); the `buffer-spares` thread creates more when fewer than 16 are left.
//!   Creating files cost the committer about half its CPU at 64 KB payloads. With
//!   `sync: always` the thread writes `batch_max_bytes` of zeros into each spare it
//!   creates (at most 1 MiB, fsynced), so the commits that append to the file later
//!   change neither its size nor its blocks: a batch file's records can be followed by
//!   zeros, or by a recycled file's older records (kept for the same reason, at most
//!   32 spares with a length), until the committer stops appending to it and cuts them
//!   (not when a read sealed it: the file is recycled with its length once drained;
//!   `spares.rs`); readers read only the committed bytes. The open deletes every spare
//!   (they hold nothing the buffer needs).
//! - sled tree `index`: the batch files' index entries (file length, record count,
//!   priority, first receive time, last sequence; varints, about 12 bytes), packed 64
//!   files to a sled value (`index.rs`: one sled entry per file cost about 400 bytes of
//!   memory each, and sled keeps written values in memory until its cache is full), so
//!   opening the buffer reads only the files committed after sled's last flush; an
//!   entry can also be a *tombstone*: the batch is being deleted (`reap.rs`). The
//!   index is also where the in-memory catalog of batch files (`catalog.rs`) pages
//!   files out to: at most about 512 files are held in memory whatever the backlog, the
//!   rest as one summary per 128 files, read back from these entries when reached. Buffers
//!   written before session 15 kept one entry per file in the tree `records` (an empty
//!   value was a tombstone); the open reads them too and moves them into groups.
//! - sled tree `meta`: `next_seq` (the sequence counter; sequences are never wall-clock)
//!   and the uplink state owned by the replicator ([`uplink`]): the idempotent producer
//!   id/epoch, per partition the next producer sequence and the highest acknowledged
//!   record sequence, and an *in-flight descriptor* for every Produce batch sent but not
//!   yet acknowledged (its records' sequences, delta-encoded: `descriptor.rs`); during a live-first drain also `live_from` (the boundary sequence;
//!   no batch file holds records from both sides of it) and per partition the
//!   acknowledged sequence of the backlog records below it.
//!
//! # Write path and durability, in order
//!
//! 1. The MQTT ingest hands a publish to [`Buffer::append`]; it gets the next sequence and
//!    joins the open in-memory batch of its priority class. Nothing is on disk yet. At
//!    most `4 x batch_max_bytes` (at least 1 MiB) wait in memory; further appends wait
//!    for the committer (memory stays bounded whatever the ingest rate).
//! 2. The committer thread cuts the open batches (at `batch_max_bytes`, or later for large
//!    records: `commit::MIN_FILE_RECORDS`) into batch files.
//!    With `sync: always` it does so as soon as records arrive and then, in the same
//!    round, fsyncs every file it wrote (`fdatasync`) and, if it created one, the
//!    directory, then inserts the index entries and `next_seq` into sled **without**
//!    flushing sled. That is the group commit: one round of fsyncs for all records that
//!    arrived meanwhile. A round does not create a file per class: it appends its
//!    records as a new segment to the end of the class's newest file (its *tail*, kept
//!    open) while that file is indexed, below `batch_max_bytes`, not yet read by the
//!    replicator (a batch it read never changes) and not on the other side of a
//!    live-first boundary; the rest go to new files. Appending needs no file creation
//!    and no directory fsync (creating a file cost more CPU than the fsyncs on
//!    journal-less ext4, see README), and inside a pre-sized file no size change or
//!    block allocation either, so the `fdatasync` writes the data pages without a
//!    journal commit (on journaled ext4) or the allocation's metadata (without one).
//!    While a round appends, a read that reaches
//!    that file waits for the round (a read returns every batch committed in its range)
//!    and makes the next round start a new file; quota evictions skip it. The file's
//!    index entry is rewritten with its new length and count (unflushed, like every
//!    entry). With `sync: interval` files never grow: a batch
//!    that fills up is written at once (no fsync; not yet visible to the replicator)
//!    and every `sync_interval` (or
//!    after 128 such files) all written files are fsynced, the directory fsynced and
//!    the files indexed together. While more than 64 MiB are buffered, a new file
//!    larger than `batch_max_bytes` (records of about 16 KB and more) goes to the disk
//!    in one `O_DIRECT` write (`buffer.direct_io`, `commit::Direct`; zeros pad it to
//!    4 KiB and are cut after the fsync, like a pre-sized spare's); the rest goes
//!    through the page cache. The fsyncs are the same either way. sled itself is flushed at most once a second by the
//!    committer (and by every step below that flushes); an index entry lost with sled's
//!    unflushed writes is rebuilt at open from its file (see below).
//! 3. After the round's fsyncs return, the committed generation advances and waiters
//!    wake. With `sync: always` the ingest withholds the MQTT PUBACK of a QoS 1/2 publish
//!    until this point, so **an acknowledged QoS 1/2 publish survives a process kill and
//!    a power cut**. With `sync: interval` the PUBACK goes out at step 1, and a kill or
//!    power cut loses the acknowledged records of at most the last interval (a kill
//!    usually loses only the open batches: written files are recovered at open).
//! 4. The replicator reads batches in key order, assigns per-partition producer sequences
//!    and persists an in-flight descriptor, flushed *before* sending, so a restarted edge
//!    re-sends exactly the same batches and the broker's idempotence drops duplicates.
//!    While it drains a backlog, the `buffer-prefetch` thread asks the kernel to read
//!    the next 8 MiB of batch files into the page cache ahead of it (`prefetch.rs`).
//! 5. When the broker acknowledges, the replicator records the partition's acknowledged
//!    sequence and deletes the descriptor (one atomic sled batch for every batch the
//!    response acknowledged; step 4 likewise writes a cut's descriptors in one), then
//!    releases the records; a batch is deleted only when every record in it is released, by the
//!    `buffer-reap` thread (the replicator never waits for it): index entries replaced by
//!    tombstones, sled flushed and its log file fsynced (which also makes the
//!    acknowledged watermarks durable), the files unlinked (or recycled as spares) and
//!    the directory fsynced,
//!    then the tombstones removed (`reap.rs`). A crash before that flush replays records
//!    that the acknowledged-sequence watermark (or the broker's idempotence) then skips.
//!
//! What survives a crash: every batch fsynced at step 2, the producer state and every
//! descriptor. What is lost: open batches (step 1). At open (`recover.rs`): a tombstone
//! deletes its file (a deletion cut short after its flush); an index entry whose file is
//! missing or shorter is real damage (every deletion tombstones and flushes
//! before it unlinks): removed and counted as corrupt; a file with neither is a commit
//! whose index entries sled lost, re-indexed from its intact prefix whatever its key, and
//! removed if that is empty (a file cut short: a commit that never completed, so never
//! acknowledged); a file *longer* than its index entry was appended to after sled last
//! stored the entry (step 2), and is re-indexed from its intact prefix, which must cover
//! the entry (else damage, as above). The intact prefix is the run of whole segments
//! whose every record passes its CRC with sequences rising through the file; what
//! follows it is an append whose fsync never returned (never acknowledged: a torn write,
//! or stale disk contents after a power cut), zeros of a pre-sized file or a recycled
//! file's old records, and is cut off the file, the cut fsynced
//! (test `kill_mid_append_keeps_acknowledged_segments_and_cuts_the_torn_tail`), so a
//! damaged record in an unindexed or grown file loses the segments from its own on (a
//! file of its indexed length is not scanned). A file the open cannot read (an I/O
//! error, or not a regular file) is moved to `<dir>/unreadable/` and counted as corrupt,
//! not deleted (test `an_unreadable_batch_file_is_set_aside_not_deleted`). A record
//! whose CRC fails is skipped and counted when read; none of these stops the edge. The in-flight descriptors' batches are
//! protected from quota eviction from the open on (their records must be re-sent as
//! they were described).
//!
//! A failed write or fsync at step 2, or a panic of the commit thread, fails the buffer
//! for good ([`Buffer::failure`]): the round's records are not acknowledged, waiters get
//! [`Error::Failed`], and the edge exits for its supervisor to restart it. An fsync is not
//! retried in place (after a failed fsync the kernel may have dropped the dirty pages, so
//! a later success proves nothing); the open after the restart applies the rules above.
//!
//! # sled's recovery (0.34.7, what the rules above rely on)
//!
//! Read in sled 0.34.7's source: all trees of a `Db` share one page cache and one log
//! file (`<dir>/db`; `Db::open_tree` in `src/db.rs`, `Config::db_path` in
//! `src/config.rs`), and every write is a log message at a growing LSN. At start,
//! `scan_segment_headers_and_tail` and `check_contiguity_in_unstable_tail`
//! (`src/pagecache/iterator.rs`) order the segments by LSN, check that the segments
//! above the highest `max_stable_lsn` found in a segment header follow each other, and
//! replay the tail only up to the first message that fails its CRC32 or carries a wrong
//! segment number (`read_message` in `src/pagecache/logger.rs`); a `sled::Batch` is
//! replayed whole or not at all (its `BatchManifest`). So after a *process kill* sled
//! recovers a prefix of its writes. It does not guarantee one after a *power cut*: a
//! flush (`make_stable` / `write_to_log` in `src/pagecache/iobuf.rs`) only calls
//! `sync_file_range` (no fsync of the file's metadata, no disk cache flush; sled fsyncs
//! only in its periodic flusher, `src/flusher.rs`, off here, and on drop), and the final
//! replay (`LogIter::next` with `last_stage`) treats a damaged message *below* the
//! header-stable LSN as the end of its segment and continues with the next segment,
//! which can replay a later write without an earlier one. Known recovery bugs (#1509,
//! #1533) add to it. Therefore the buffer assumes no prefix: it never deletes an intact
//! unindexed file (tested by `unindexed_batch_below_next_seq_is_recovered`), marks
//! deletions with tombstones instead of inferring them from `next_seq`, and fsyncs sled's
//! log file after each flush a deletion depends on (`Inner::flush_durable`). The uplink
//! state (producer identity, Produce descriptors, the live-first boundary) is made durable
//! the same way (`uplink.rs`), so its promises also hold across a power cut. When sled
//! refuses to open at all (its log contradicts the snapshot it wrote at the last open),
//! its files are set aside and the index rebuilt from the batch files (`damaged.rs`).
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

mod append;
mod catalog;
mod commit;
mod damaged;
mod descriptor;
mod files;
mod index;
mod keyed;
mod open;
mod pool;
mod prefetch;
mod quota;
mod read;
mod reap;
pub mod record;
mod recover;
mod spares;
pub mod uplink;
mod varint;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use commit::DIRECT_BACKLOG_BYTES;
use commit::{commit_loop, commit_once};
use files::Index;
use quota::{remove_batch, victim};

pub use read::{Held, ReadBatch};
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
    /// A group commit failed or its thread panicked: nothing is committed any more (see
    /// [`Buffer::failure`]).
    #[error("buffer failed: {0}")]
    Failed(String),
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
    /// Largest batch file.
    pub batch_max_bytes: usize,
    /// sled page cache capacity.
    pub cache_bytes: u64,
    /// Write files of large records with `O_DIRECT` (`commit::Direct`)...
    pub direct_io: bool,
    /// ...while more than this many bytes are buffered.
    pub direct_io_backlog_bytes: u64,
}

/// Drop reasons, used as metric labels: the quota policy's two, a record larger than the
/// whole quota, and a record whose Produce batch would exceed `cloud.max_message_bytes`
/// (the broker would refuse it with MESSAGE_TOO_LARGE however often it was sent).
pub const DROP_REASONS: [&str; 4] = [
    "drop_oldest",
    "drop_newest",
    "too_large",
    "too_large_for_cloud",
];

/// Index of `too_large_for_cloud` in [`DROP_REASONS`].
pub const DROPPED_TOO_LARGE_FOR_CLOUD: usize = 3;

/// Counters read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records appended.
    pub appended: AtomicU64,
    /// Payload+metadata bytes appended.
    pub appended_bytes: AtomicU64,
    /// Dropped records by reason, indexed like [`DROP_REASONS`].
    pub dropped: [AtomicU64; DROP_REASONS.len()],
    /// Corrupt records (or unreadable batches) skipped.
    pub corrupt: AtomicU64,
    /// Group commits (fsyncs).
    pub commits: AtomicU64,
    /// Batch files written with `O_DIRECT`.
    pub direct_files: AtomicU64,
    /// Batches whose index entry the last open rebuilt from the file (committed after
    /// sled's last flush).
    pub recovered: AtomicU64,
    /// 1 when the open found sled's files damaged beyond what sled recovers, set them
    /// aside and rebuilt the index from the batch files (`damaged.rs`).
    pub index_rebuilt: AtomicU64,
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
    /// An empty record vector with capacity, handed back by the committer: the next open
    /// batch reuses it instead of growing a new one by doubling.
    spare: Vec<Record>,
    open_bytes: u64,
    /// Bytes of batch files written but not yet fsynced and indexed (`sync: interval`).
    staged_bytes: u64,
    gen: u64,
    committed_gen: u64,
    /// Every committed batch file, a bounded number of them in memory (`catalog.rs`).
    catalog: catalog::Catalog,
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
    /// Tails a commit is appending to right now: reads stop before them and evictions
    /// skip them until the commit registers the new records.
    appending: BTreeSet<u64>,
    /// A read stopped at a tail being appended to: the next commit starts new files
    /// instead of growing the tails, so the replicator is not kept waiting.
    seal: bool,
}

struct Inner {
    /// Directory of batch files.
    files: PathBuf,
    db: sled::Db,
    /// The batch files' index (`index.rs`).
    index: Mutex<index::Groups>,
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
    /// `State::committed_gen`, readable without the lock ([`Buffer::is_durable`] runs
    /// once per PUBACK). Stored under the lock, after `committed_gen`.
    durable_gen: AtomicU64,
    /// How long the latest group commit that wrote something took, in microseconds
    /// ([`Buffer::last_commit_time`]).
    last_round_us: AtomicU64,
    stats: Stats,
    /// Serialises group commits so `committed_gen` only covers flushed records.
    commit_lock: Mutex<commit::Committer>,
    /// Wakes the replicator after each commit.
    on_commit: Arc<tokio::sync::Notify>,
    /// Buffers that batch files are read into, reused once their records are dropped.
    read_pool: pool::ReadPool,
    /// Why the buffer failed, once it has (`State::failed`, for async watchers).
    fatal: tokio::sync::watch::Sender<Option<String>>,
    /// Tests: the committer's next round panics.
    #[cfg(test)]
    test_panic: std::sync::atomic::AtomicBool,
    /// Tests: every commit round first sleeps this long (a slow disk).
    #[cfg(test)]
    test_commit_delay_ms: AtomicU64,
    /// Tests: every batch file read first waits until this is cleared (a slow disk);
    /// `test_reading` says one is waiting.
    #[cfg(test)]
    test_hold_reads: std::sync::atomic::AtomicBool,
    #[cfg(test)]
    test_reading: std::sync::atomic::AtomicBool,
    /// Drained batches for the reaper thread to delete (index entry, then file), so the
    /// replicator never waits for an unlink.
    reap: Mutex<Option<std::sync::mpsc::Sender<Reap>>>,
    /// sled's log file (`<dir>/db`), fsynced after a flush that must survive a power cut
    /// (sled's own flush only calls `sync_file_range`).
    sled_file: std::fs::File,
    /// Bytes of the batch files on disk: raised by the committer's writes, lowered by
    /// every unlink (the metrics read it instead of listing the directory).
    file_bytes: AtomicU64,
    /// Empty files the committer renames into place instead of creating one.
    spares: Arc<spares::Spares>,
    /// Where the replicator's reads are, for the read-ahead thread (`prefetch.rs`).
    prefetch: prefetch::Hints,
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
    filler: Mutex<Option<JoinHandle<()>>>,
    prefetcher: Mutex<Option<JoinHandle<()>>>,
}

const NEXT_SEQ: &[u8] = b"next_seq";

/// The batch files' directory, inside the buffer's.
const BATCHES: &str = "batches";

impl State {
    /// Bytes counted against the quota: committed, staged and open batches.
    fn used_bytes(&self) -> u64 {
        self.catalog.bytes() + self.staged_bytes + self.open_bytes
    }
}

impl Inner {
    /// Open (uncommitted) bytes above which appends wait for the committer. Tried and not
    /// kept (session 27): two files' worth for large records (2 MiB of 64 KB records,
    /// where 16 of them fill the 1 MiB bound and ingest and committer take turns). The
    /// 64 KB ingest rows of `edge-bench` ran about 25% faster, but a 1 GB drain of
    /// 64 KB records then held 28-30 MB of RSS (median) instead of 23: memory freed by
    /// the ingest stayed with the process.
    fn open_limit(&self) -> u64 {
        (self.cfg.batch_max_bytes as u64)
            .saturating_mul(4)
            .max(1 << 20)
    }

    /// The batch index, shared by the committer and the reaper.
    fn index(&self) -> MutexGuard<'_, index::Groups> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes a batch (already out of the state) now, on this thread (see [`reap`] for
    /// the order of the steps).
    fn delete_batch(&self, s: &mut State, key: u64) -> Result<(), Error> {
        reap::delete(self, &[key])?;
        s.catalog.forget(&[key]);
        Ok(())
    }

    /// Flushes sled and fsyncs its log file: every sled write so far survives a kill and
    /// a power cut.
    fn flush_durable(&self) -> Result<(), Error> {
        self.db.flush()?;
        self.sled_file.sync_data()?;
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
    fn reap(&self, s: &mut State, key: u64) -> Result<(), Error> {
        let sent = match &*self.reap.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.send(Reap::Batch(key)).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            self.delete_batch(s, key)
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Buffer {
    /// Counters for metrics.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Reports why the buffer failed, once it has: a group commit could not write or
    /// fsync (retrying an fsync that failed is not safe: the kernel may have dropped the
    /// dirty pages) or the committer thread panicked. Every later acknowledgement that
    /// waits for a commit fails, so the process should exit and let its supervisor
    /// restart it: the open recovers the files as after a crash.
    pub fn failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.fatal.subscribe()
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
        let oldest_stored = s.catalog.oldest_recv_ms();
        Snapshot {
            records: s.catalog.records() + open_records + s.committing,
            bytes: s.used_bytes(),
            oldest_recv_ms: match (oldest_open, oldest_stored) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// Commits the open (and written, `sync: interval`) batches now: returns once they are
    /// fsynced and indexed.
    pub fn commit(&self) -> Result<(), Error> {
        commit_once(&self.inner, true, Instant::now())?;
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
        join(&self.committer);
        // Closing the channel ends the reaper after the deletions queued so far; join it
        // so its handle on sled is gone before anyone reopens the directory.
        drop(
            self.inner
                .reap
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        join(&self.reaper);
        self.inner.prefetch.close();
        join(&self.prefetcher);
        // No spare is created after this (a reopen deletes the spares there are).
        self.inner.spares.stop();
        join(&self.filler);
    }

    /// Bytes on disk: sled (index, metadata) plus the batch files (a running total, no
    /// directory listing).
    pub fn disk_bytes(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0) + self.batch_file_bytes()
    }

    /// Bytes of the batch files on disk.
    pub fn batch_file_bytes(&self) -> u64 {
        self.inner.file_bytes.load(Ordering::Relaxed)
    }
}

/// Waits for the buffer thread in `slot` to end (once; later calls find it empty).
fn join(slot: &Mutex<Option<JoinHandle<()>>>) {
    let handle = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(h) = handle {
        let _ = h.join();
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
