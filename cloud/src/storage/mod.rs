//! Storage: one RocksDB instance holding every topic's log and all metadata.
//!
//! Domain verbs only (topics, log entries, producer state, committed offsets, counters);
//! nothing here knows Kafka or MQTT wire types. A log entry is an opaque byte string
//! stored under `(topic_id, partition, base_offset)`; the caller decides what it means.
//! Key layout: `keys`. Write path and durability: `writer`.
//!
//! Durability, as numbered steps:
//! 1. Every mutation is a [`WriteSet`] applied atomically in one RocksDB `WriteBatch`
//!    (log entries and the producer state that deduplicates them land together).
//! 2. RocksDB appends the batch to its write-ahead log before answering, so a process
//!    kill (SIGKILL, panic) loses nothing that was answered.
//! 3. A power cut loses nothing that was answered as durable under `sync: group` (the WAL
//!    was fsynced before the answer); under `interval` at most `sync_interval_ms` of
//!    writes; under `none` whatever the OS had not written back.
//! 4. Opening replays the WAL; partition end offsets are recomputed from the last key.

mod keys;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, DB};
use tokio::sync::oneshot;

/// The live WAL files RocksDB may keep, in bytes, before it flushes the column families
/// that hold the oldest one. The metadata family's memtable fills slowly (offsets, topic
/// records), yet it keeps every WAL file alive since its oldest unflushed write; RocksDB's
/// default bound is four times the families' total memtable budget (1 GiB here). A 1.3 GB
/// Kafka produce left 21 WAL files and a 2,629 MB store; with this bound, one WAL file and
/// 1,352 MB, and a restart after a crash replays about this much at most. The log family flushes at
/// 64 MiB regardless; the metadata family now flushes a small SST every 256 MiB written.
const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_META: &str = "meta";

/// Errors of the storage layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("storage backend error: {0}")]
    Backend(String),
    #[error("corrupt stored value under {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("storage writer has stopped")]
    Closed,
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Backend(e.to_string())
    }
}

/// When the write-ahead log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Durable writes wait for an fsync shared by everything queued with them.
    Group,
    /// The WAL is fsynced on a timer; writes are answered before that.
    Interval(Duration),
    /// Never fsync explicitly.
    None,
}

/// A topic's stored metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub id: u32,
    pub name: String,
    pub partitions: u32,
    pub configs: BTreeMap<String, String>,
}

impl TopicRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.id.to_be_bytes());
        v.extend_from_slice(&self.partitions.to_be_bytes());
        for (k, val) in &self.configs {
            v.extend_from_slice(&(k.len() as u32).to_be_bytes());
            v.extend_from_slice(k.as_bytes());
            v.extend_from_slice(&(val.len() as u32).to_be_bytes());
            v.extend_from_slice(val.as_bytes());
        }
        v
    }

    fn decode(name: &str, v: &[u8]) -> Option<TopicRecord> {
        let id = u32::from_be_bytes(v.get(0..4)?.try_into().ok()?);
        let partitions = u32::from_be_bytes(v.get(4..8)?.try_into().ok()?);
        let mut configs = BTreeMap::new();
        let mut at = 8;
        let take = |at: &mut usize| -> Option<String> {
            let len = u32::from_be_bytes(v.get(*at..*at + 4)?.try_into().ok()?) as usize;
            let s = std::str::from_utf8(v.get(*at + 4..*at + 4 + len)?).ok()?;
            *at += 4 + len;
            Some(s.to_string())
        };
        while at < v.len() {
            let k = take(&mut at)?;
            let val = take(&mut at)?;
            configs.insert(k, val);
        }
        Some(TopicRecord {
            id,
            name: name.to_string(),
            partitions,
            configs,
        })
    }
}

enum Op {
    PutLog([u8; keys::LOG_KEY_LEN], Bytes),
    DeleteLog([u8; keys::LOG_KEY_LEN]),
    DeleteLogRange([u8; keys::LOG_KEY_LEN], [u8; keys::LOG_KEY_LEN]),
    PutMeta(Vec<u8>, Vec<u8>),
    DeleteMeta(Vec<u8>),
    DeleteMetaRange(Vec<u8>, Vec<u8>),
}

/// A set of mutations applied atomically.
#[derive(Default)]
pub struct WriteSet {
    ops: Vec<Op>,
    bytes: usize,
}

impl WriteSet {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn put_log(&mut self, topic_id: u32, partition: u32, offset: u64, value: Bytes) {
        self.bytes += value.len() + keys::LOG_KEY_LEN;
        self.ops.push(Op::PutLog(
            keys::log_key(topic_id, partition, offset),
            value,
        ));
    }

    /// Deletes the log entry (batch) at `offset` (compaction emptied it).
    pub fn delete_log(&mut self, topic_id: u32, partition: u32, offset: u64) {
        self.ops
            .push(Op::DeleteLog(keys::log_key(topic_id, partition, offset)));
    }

    /// Deletes every log entry of the partition whose base offset is below `offset`.
    pub fn delete_log_before(&mut self, topic_id: u32, partition: u32, offset: u64) {
        self.ops.push(Op::DeleteLogRange(
            keys::log_key(topic_id, partition, 0),
            keys::log_key(topic_id, partition, offset),
        ));
    }

    pub fn put_producer(&mut self, topic_id: u32, partition: u32, producer_id: i64, v: Vec<u8>) {
        self.bytes += v.len() + 24;
        self.ops.push(Op::PutMeta(
            keys::producer_key(topic_id, partition, producer_id),
            v,
        ));
    }

    pub fn put_topic(&mut self, t: &TopicRecord) {
        let v = t.encode();
        self.bytes += v.len() + t.name.len();
        self.ops.push(Op::PutMeta(keys::topic_key(&t.name), v));
    }

    /// Deletes a topic: its metadata, every log entry and its producer state (range deletes).
    pub fn delete_topic(&mut self, t: &TopicRecord) {
        self.ops.push(Op::DeleteMeta(keys::topic_key(&t.name)));
        let next = t.id as u64 + 1;
        let mut end = [0xffu8; keys::LOG_KEY_LEN];
        if next <= u32::MAX as u64 {
            end = keys::log_key(next as u32, 0, 0);
        }
        self.ops
            .push(Op::DeleteLogRange(keys::log_key(t.id, 0, 0), end));
        let (a, b) = keys::producer_topic_range(t.id);
        self.ops.push(Op::DeleteMetaRange(a, b));
        let (a, b) = keys::mem_floor_topic_range(t.id);
        self.ops.push(Op::DeleteMetaRange(a, b));
        let (a, b) = keys::source_topic_range(t.id);
        self.ops.push(Op::DeleteMetaRange(a, b));
        let (a, b) = keys::tier_topic_range(t.id);
        self.ops.push(Op::DeleteMetaRange(a, b));
        let (a, b) = keys::log_start_topic_range(t.id);
        self.ops.push(Op::DeleteMetaRange(a, b));
    }

    /// Forgets one uploaded segment of a tiered partition (retention).
    pub fn delete_tier_segment(&mut self, topic_id: u32, partition: u32, base: u64) {
        self.ops
            .push(Op::DeleteMeta(keys::tier_key(topic_id, partition, base)));
    }

    /// Records one uploaded segment of a tiered partition (`crate::tier`).
    pub fn put_tier_segment(&mut self, topic_id: u32, partition: u32, base: u64, v: Vec<u8>) {
        self.bytes += v.len() + 17;
        self.ops
            .push(Op::PutMeta(keys::tier_key(topic_id, partition, base), v));
    }

    /// Records one index entry of an S3-backed topic (`crate::source`).
    pub fn put_source_entry(&mut self, topic_id: u32, partition: u32, first: u64, v: Vec<u8>) {
        self.bytes += v.len() + 17;
        self.ops
            .push(Op::PutMeta(keys::source_key(topic_id, partition, first), v));
    }

    /// Records that a memory partition handed out no offset at or above `floor`.
    pub fn put_mem_floor(&mut self, topic_id: u32, partition: u32, floor: u64) {
        self.bytes += 17;
        self.ops.push(Op::PutMeta(
            keys::mem_floor_key(topic_id, partition),
            floor.to_be_bytes().to_vec(),
        ));
    }

    /// Records that the partition starts at `start` (DeleteRecords).
    pub fn put_log_start(&mut self, topic_id: u32, partition: u32, start: u64) {
        self.bytes += 17;
        self.ops.push(Op::PutMeta(
            keys::log_start_key(topic_id, partition),
            start.to_be_bytes().to_vec(),
        ));
    }

    pub fn put_offset(&mut self, group: &str, topic: &str, partition: u32, v: Vec<u8>) {
        self.bytes += v.len() + group.len() + topic.len();
        self.ops
            .push(Op::PutMeta(keys::offset_key(group, topic, partition), v));
    }

    pub fn delete_group_offsets(&mut self, group: &str) {
        let p = keys::offsets_group_prefix(group);
        let end = keys::prefix_end(&p);
        self.ops.push(Op::DeleteMetaRange(p, end));
    }

    pub fn put_counter(&mut self, name: &str, value: u64) {
        self.ops.push(Op::PutMeta(
            keys::counter_key(name),
            value.to_be_bytes().to_vec(),
        ));
    }

    /// Stores opaque bytes under the meta key `prefix` + `name` (the MQTT view's records:
    /// retained messages, sessions, share groups, wills).
    fn put_named(&mut self, prefix: u8, name: &str, v: Vec<u8>) {
        self.bytes += v.len() + name.len();
        self.ops.push(Op::PutMeta(keys::named_key(prefix, name), v));
    }

    /// Sets the retained message of a topic (opaque bytes chosen by the caller).
    pub fn put_retained(&mut self, topic: &str, v: Vec<u8>) {
        self.put_named(keys::RETAINED, topic, v);
    }

    pub fn delete_retained(&mut self, topic: &str) {
        self.ops
            .push(Op::DeleteMeta(keys::named_key(keys::RETAINED, topic)));
    }

    /// Stores a persistent session (opaque bytes chosen by the caller).
    pub fn put_session(&mut self, client_id: &str, v: Vec<u8>) {
        self.put_named(keys::SESSION, client_id, v);
    }

    pub fn delete_session(&mut self, client_id: &str) {
        self.ops
            .push(Op::DeleteMeta(keys::named_key(keys::SESSION, client_id)));
    }

    /// Stores the positions of a share group (opaque bytes chosen by the caller), keyed
    /// by its subscription `$share/<group>/<filter>`.
    pub fn put_share_group(&mut self, key: &str, v: Vec<u8>) {
        self.put_named(keys::SHARE_GROUP, key, v);
    }

    pub fn delete_share_group(&mut self, key: &str) {
        self.ops
            .push(Op::DeleteMeta(keys::named_key(keys::SHARE_GROUP, key)));
    }

    /// Stores the pending delayed will of a client (opaque bytes chosen by the caller).
    pub fn put_will(&mut self, client_id: &str, v: Vec<u8>) {
        self.put_named(keys::WILL, client_id, v);
    }

    pub fn delete_will(&mut self, client_id: &str) {
        self.ops
            .push(Op::DeleteMeta(keys::named_key(keys::WILL, client_id)));
    }

    /// Records the original name behind a log topic name that cannot carry it (hashed).
    pub fn put_topic_alias(&mut self, log_topic: &str, original: &str) {
        self.bytes += log_topic.len() + original.len();
        self.ops.push(Op::PutMeta(
            keys::named_key(keys::TOPIC_ALIAS, log_topic),
            original.as_bytes().to_vec(),
        ));
    }
}

/// Whether files in `dir` (created if missing) can be opened with `O_DIRECT`: a probe
/// file is created and removed.
fn direct_io_supported(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(".direct-io-probe");
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let _ = std::fs::remove_file(&probe);
    opened.map(drop)
}

/// The store: reads go straight to RocksDB, writes through the group-commit writer.
pub struct Store {
    db: Arc<DB>,
    policy: SyncPolicy,
    /// Set by every write applied without an fsync (`writer.rs`, step 6).
    dirty: Arc<std::sync::atomic::AtomicBool>,
    tx: Option<mpsc::Sender<writer::WriteReq>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Store {
    /// Stops the writer (after it drained its queue) so the database is closed when the
    /// store is dropped, and can be reopened at once.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with flush and compaction on direct I/O
    /// where the filesystem allows it ([`Store::open_with`]).
    pub fn open(dir: &Path, policy: SyncPolicy) -> Result<Store, Error> {
        Store::open_with(dir, policy, true)
    }

    /// Opens (or creates) the store in `dir`. With `direct_io`, RocksDB's flushes and
    /// compactions write (and compactions read) SST files with `O_DIRECT`, past the page
    /// cache (`storage.direct_io`). Every logged byte is written twice at least (WAL,
    /// then SST) and rewritten by compactions; through the page cache each of those
    /// writes is a kernel copy plus page allocation and writeback, and the flush and
    /// compaction threads were about half of the cloud's CPU in a 1 GB edge drain. Reads
    /// (Fetch) stay buffered. A filesystem that refuses `O_DIRECT` gets buffered writes
    /// and a warning: RocksDB itself would refuse to open the store ("Direct I/O is not
    /// supported by the specified DB", seen on ramfs).
    pub fn open_with(dir: &Path, policy: SyncPolicy, direct_io: bool) -> Result<Store, Error> {
        Store::open_tuned(dir, policy, direct_io, MAX_TOTAL_WAL_BYTES)
    }

    /// [`Store::open_with`] with the WAL bound `max_wal` (tests use a small one).
    fn open_tuned(
        dir: &Path,
        policy: SyncPolicy,
        direct_io: bool,
        max_wal: u64,
    ) -> Result<Store, Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // File handles depend on data volume (SST count), never on the topic count.
        opts.set_max_open_files(512);
        opts.increase_parallelism(2);
        opts.set_max_total_wal_size(max_wal);
        if direct_io {
            match direct_io_supported(dir) {
                Ok(()) => opts.set_use_direct_io_for_flush_and_compaction(true),
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    cause = %e,
                    "O_DIRECT refused here: flush and compaction use buffered writes"
                ),
            }
        }
        let mut log_opts = Options::default();
        log_opts.set_write_buffer_size(64 << 20);
        let meta_opts = Options::default();
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, log_opts),
            ColumnFamilyDescriptor::new(CF_META, meta_opts),
        ];
        let db = Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?);
        let dirty = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, writer) = writer::spawn(db.clone(), policy, dirty.clone())?;
        Ok(Store {
            db,
            policy,
            dirty,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, Error> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Backend(format!("missing cf {name}")))
    }

    /// Applies `set` atomically; `durable` asks for the sync policy's fsync before returning.
    /// Under a policy that never fsyncs per write (`none`, `interval`) the write is applied
    /// on the calling thread ([`Store::write_now`]): it is done when this returns either
    /// way, and the writer thread would add two thread hand-offs (with `sync: none`, most
    /// of a will's write in an MQTT reconnect storm). Under `group` even a non-durable
    /// write goes through the writer: applied on the caller's thread, it would wait inside
    /// RocksDB for the writer's fsync in progress, blocking that thread (measured: a will
    /// delete made non-durable that way cut the durable connect storm by 19%).
    pub async fn write(&self, set: WriteSet, durable: bool) -> Result<(), Error> {
        let tx = self.tx.as_ref().ok_or(Error::Closed)?;
        if self.policy != SyncPolicy::Group {
            return self.write_now(set);
        }
        let (done, rx) = oneshot::channel();
        tx.send(writer::WriteReq {
            set,
            durable,
            done,
            pending: None,
            #[cfg(test)]
            hold: None,
        })
        .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Whether a write asking for `durable` must wait for an fsync under the sync policy
    /// (only `group` fsyncs per write; `interval` and `none` never make a writer wait).
    pub fn needs_sync(&self, durable: bool) -> bool {
        durable && self.policy == SyncPolicy::Group
    }

    /// Tests only: the writer thread writes nothing submitted after this call until the
    /// returned sender is dropped (an fsync that takes as long as a test needs).
    #[cfg(test)]
    pub(crate) fn hold_writer(&self) -> mpsc::Sender<()> {
        let (release, hold) = mpsc::channel();
        let (done, _) = oneshot::channel();
        if let Some(tx) = &self.tx {
            let _ = tx.send(writer::WriteReq {
                set: WriteSet::default(),
                durable: false,
                done,
                pending: None,
                hold: Some(hold),
            });
        }
        release
    }

    /// Applies `set` atomically on the calling thread, without an fsync: for writes that
    /// [`Store::needs_sync`] says need none. Saves the two thread hand-offs through the
    /// writer (about half of an MQTT QoS 1 round trip without fsync). RocksDB serialises
    /// concurrent writers itself; callers keep their own order (a partition writes under
    /// its lock).
    pub fn write_now(&self, mut set: WriteSet) -> Result<(), Error> {
        writer::apply_now(&self.db, &mut set, &self.dirty)
    }

    /// Under `sync: group`, fsyncs the WAL every `every` while writes applied without an
    /// fsync are unsynced (`storage.hybrid_flush_ms`; `writer.rs`, step 6). Other policies
    /// already bound those writes (`interval`) or leave them to RocksDB (`none`).
    pub fn flush_unsynced_every(&self, every: Duration) -> Result<(), Error> {
        if self.policy != SyncPolicy::Group {
            return Ok(());
        }
        writer::spawn_flusher(&self.db, self.dirty.clone(), every)
    }

    /// Whether writes applied without an fsync may be unsynced (tests).
    #[cfg(test)]
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Queues `set` and returns a receiver for its result, so a caller can submit under a
    /// lock (fixing the order) and await outside it. `pending` (already incremented by the
    /// caller) is decremented by the writer once the write is applied or failed, whether
    /// or not the receiver is still awaited.
    pub fn submit(
        &self,
        set: WriteSet,
        durable: bool,
        pending: Arc<AtomicU32>,
    ) -> oneshot::Receiver<Result<(), Error>> {
        let (done, rx) = oneshot::channel();
        match &self.tx {
            Some(tx) => {
                let req = writer::WriteReq {
                    set,
                    durable,
                    done,
                    pending: Some(pending),
                    #[cfg(test)]
                    hold: None,
                };
                // If the writer is gone the receiver reports a closed channel.
                if let Err(mpsc::SendError(req)) = tx.send(req) {
                    if let Some(p) = req.pending {
                        p.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    }
                }
            }
            None => {
                pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        rx
    }

    pub fn load_topics(&self) -> Result<Vec<TopicRecord>, Error> {
        let cf = self.cf(CF_META)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(b"T", Direction::Forward))
        {
            let (k, v) = item?;
            if k.first() != Some(&b'T') {
                break;
            }
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            let rec = TopicRecord::decode(&name, &v).ok_or_else(|| Error::Corrupt {
                key: format!("topic {name}"),
                reason: "bad topic record".into(),
            })?;
            out.push(rec);
        }
        Ok(out)
    }

    pub fn counter(&self, name: &str) -> Result<u64, Error> {
        let cf = self.cf(CF_META)?;
        match self.db.get_cf(cf, keys::counter_key(name))? {
            Some(v) if v.len() == 8 => Ok(u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8]))),
            Some(_) => Err(Error::Corrupt {
                key: format!("counter {name}"),
                reason: "length".into(),
            }),
            None => Ok(0),
        }
    }

    /// Every retained message: `(topic, value)`.
    pub fn retained(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.named(keys::RETAINED)
    }

    /// Every persistent session: `(client id, value)`.
    pub fn sessions(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.named(keys::SESSION)
    }

    /// One persistent session's value.
    pub fn session(&self, client_id: &str) -> Result<Option<Vec<u8>>, Error> {
        let cf = self.cf(CF_META)?;
        Ok(self
            .db
            .get_cf(cf, keys::named_key(keys::SESSION, client_id))?)
    }

    /// The stored will of `client_id`, if any.
    pub fn will(&self, client_id: &str) -> Result<Option<Vec<u8>>, Error> {
        let cf = self.cf(CF_META)?;
        Ok(self.db.get_cf(cf, keys::named_key(keys::WILL, client_id))?)
    }

    /// Every stored share group: `(subscription, value)`.
    pub fn share_groups(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.named(keys::SHARE_GROUP)
    }

    /// Every pending delayed will: `(client id, value)`.
    pub fn wills(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.named(keys::WILL)
    }

    /// Every topic alias: `(log topic name, original name)`.
    pub fn topic_aliases(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(self
            .named(keys::TOPIC_ALIAS)?
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect())
    }

    fn named(&self, prefix: u8) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let cf = self.cf(CF_META)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&[prefix], Direction::Forward))
        {
            let (k, v) = item?;
            if k.first() != Some(&prefix) {
                break;
            }
            out.push((String::from_utf8_lossy(&k[1..]).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// The entry with the highest base offset in the partition.
    pub fn log_last(&self, topic_id: u32, partition: u32) -> Result<Option<(u64, Bytes)>, Error> {
        let cf = self.cf(CF_LOG)?;
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek_for_prev(keys::log_key(topic_id, partition, u64::MAX));
        Ok(self.entry_at(&it, topic_id, partition))
    }

    /// The entry with the lowest base offset in the partition.
    pub fn log_first(&self, topic_id: u32, partition: u32) -> Result<Option<(u64, Bytes)>, Error> {
        Ok(self
            .log_read(topic_id, partition, 0, 1, 1)?
            .into_iter()
            .next())
    }

    fn entry_at(
        &self,
        it: &rocksdb::DBRawIteratorWithThreadMode<'_, DB>,
        topic_id: u32,
        partition: u32,
    ) -> Option<(u64, Bytes)> {
        if !it.valid() {
            return None;
        }
        let (t, p, o) = keys::parse_log_key(it.key()?)?;
        if t != topic_id || p != partition {
            return None;
        }
        Some((o, Bytes::copy_from_slice(it.value()?)))
    }

    /// Reads entries starting with the one that contains `from` (the entry with the greatest
    /// base offset <= `from`, else the first after it), until `max_bytes` (at least one
    /// entry) or `max_entries`.
    pub fn log_read(
        &self,
        topic_id: u32,
        partition: u32,
        from: u64,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<Vec<(u64, Bytes)>, Error> {
        let cf = self.cf(CF_LOG)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::log_key(topic_id, partition, u64::MAX).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(cf, ro);
        it.seek_for_prev(keys::log_key(topic_id, partition, from));
        if self.entry_at(&it, topic_id, partition).is_none() {
            it.seek(keys::log_key(topic_id, partition, from));
        }
        let mut out = Vec::new();
        let mut total = 0usize;
        while let Some((o, v)) = self.entry_at(&it, topic_id, partition) {
            if !out.is_empty() && total + v.len() > max_bytes {
                break;
            }
            total += v.len();
            out.push((o, v));
            if out.len() >= max_entries || total >= max_bytes {
                break;
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// A memory partition's offset floor ([`WriteSet::put_mem_floor`]), if it has one.
    pub fn mem_floor(&self, topic_id: u32, partition: u32) -> Result<Option<u64>, Error> {
        self.meta_u64(keys::mem_floor_key(topic_id, partition))
    }

    /// Bytes of the store's SST files, all column families (`None` if RocksDB does not
    /// say).
    pub fn sst_bytes(&self) -> Option<u64> {
        let mut total = 0;
        for name in [CF_LOG, CF_META] {
            let cf = self.cf(name).ok()?;
            total += self
                .db
                .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
                .ok()??;
        }
        Some(total)
    }

    /// The log start DeleteRecords set, if any.
    pub fn log_start(&self, topic_id: u32, partition: u32) -> Result<Option<u64>, Error> {
        self.meta_u64(keys::log_start_key(topic_id, partition))
    }

    fn meta_u64(&self, key: Vec<u8>) -> Result<Option<u64>, Error> {
        let cf = self.cf(CF_META)?;
        Ok(self
            .db
            .get_cf(cf, key)?
            .and_then(|v| Some(u64::from_be_bytes(v.as_slice().try_into().ok()?))))
    }

    pub fn producer_states(
        &self,
        topic_id: u32,
        partition: u32,
    ) -> Result<Vec<(i64, Vec<u8>)>, Error> {
        let cf = self.cf(CF_META)?;
        let prefix = keys::producer_prefix(topic_id, partition);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                break;
            }
            let pid = i64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or([0; 8]));
            out.push((pid, v.to_vec()));
        }
        Ok(out)
    }

    /// Every index entry of an S3-backed topic: `(partition, first offset, value)`, in
    /// key order.
    pub fn source_entries(&self, topic_id: u32) -> Result<Vec<(u32, u64, Vec<u8>)>, Error> {
        self.partition_offset_entries(keys::source_topic_range(topic_id), keys::parse_source_key)
    }

    /// Every uploaded segment of a tiered topic: `(partition, base offset, value)`, in key
    /// order.
    pub fn tier_segments(&self, topic_id: u32) -> Result<Vec<(u32, u64, Vec<u8>)>, Error> {
        self.partition_offset_entries(keys::tier_topic_range(topic_id), keys::parse_tier_key)
    }

    fn partition_offset_entries(
        &self,
        (from, to): (Vec<u8>, Vec<u8>),
        parse: keys::ParsePartitionOffset,
    ) -> Result<Vec<(u32, u64, Vec<u8>)>, Error> {
        let cf = self.cf(CF_META)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (k, v) = item?;
            if k.as_ref() >= to.as_slice() {
                break;
            }
            if let Some((_, p, first)) = parse(&k) {
                out.push((p, first, v.to_vec()));
            }
        }
        Ok(out)
    }

    /// Committed offsets of one group: `(topic, partition, value)`.
    pub fn group_offsets(&self, group: &str) -> Result<Vec<(String, u32, Vec<u8>)>, Error> {
        let cf = self.cf(CF_META)?;
        let prefix = keys::offsets_group_prefix(group);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if let Some((g, t, p)) = keys::parse_offset_key(&k) {
                if g == group {
                    out.push((t, p, v.to_vec()));
                }
            }
        }
        Ok(out)
    }

    /// Names of every group that has committed offsets.
    pub fn groups_with_offsets(&self) -> Result<Vec<String>, Error> {
        let cf = self.cf(CF_META)?;
        let mut out: Vec<String> = Vec::new();
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek(b"O");
        while it.valid() {
            let Some(k) = it.key() else { break };
            let Some((g, _, _)) = keys::parse_offset_key(k) else {
                break;
            };
            let next = keys::prefix_end(&keys::offsets_group_prefix(&g));
            out.push(g);
            it.seek(next);
        }
        it.status()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
