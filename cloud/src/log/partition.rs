//! One partition's log: offset assignment, idempotence, reads and append wake-ups.
//!
//! Invariants:
//! - Offsets are assigned, and the write submitted to the store's single writer (or, when
//!   it needs no fsync and nothing of this partition is queued there, applied directly),
//!   under `state`'s lock, so storage order equals offset order.
//! - `visible` (the high watermark) only moves forward, and only after the store
//!   confirmed the write under the sync policy. Fetch never returns bytes above it.
//! - The last stored batch is never deleted by retention, so the end offset is always
//!   recoverable from the last key after a restart.
//! - A memory partition ([`MemLog`]) appends and reads under the same rules without the
//!   store; before it hands out an offset at or above its stored floor it raises the floor
//!   (by [`memory::RESERVE`] offsets), so after a restart it starts at that floor.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::error;

use super::batch::{self, end_of, BatchHeader};
use super::memory::{self, Budget, MemLog};
use super::producer::{ProducerState, SeqCheck, SeqEntry};
use super::waiters::Waiters;
use crate::storage::{self, Store, WriteSet};

/// Why an append was refused (mapped to Kafka error codes by the API layer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AppendError {
    #[error("corrupt record batch: {0}")]
    Corrupt(#[from] batch::BatchError),
    #[error("out of order sequence number")]
    OutOfOrderSequence,
    #[error("producer epoch is fenced")]
    StaleEpoch,
    #[error("transactional batches are not supported")]
    Transactional,
    #[error("storage: {0}")]
    Storage(#[from] storage::Error),
}

/// Offsets of an accepted append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    pub(crate) base_offset: u64,
    pub(crate) end_offset: u64,
    pub(crate) duplicate: bool,
}

struct State {
    next_offset: u64,
    producers: HashMap<i64, ProducerState>,
    reload: bool,
    /// Memory partitions: no offset at or above this was handed out (stored in `meta`).
    floor: u64,
}

pub(crate) struct PartitionLog {
    pub(crate) topic_id: u32,
    pub(crate) index: u32,
    state: Mutex<State>,
    visible: AtomicU64,
    log_start: AtomicU64,
    /// Appends queued on the store's writer and not yet applied (the writer decrements).
    /// Writes that need no fsync go straight to the store (`Store::write_now`), but only
    /// while this is zero: otherwise a later offset could be stored, and become readable,
    /// before an earlier one.
    queued: Arc<AtomicU32>,
    /// The batches of a memory partition (`storage.mode=memory`); `None`: in the store.
    mem: Option<Mutex<MemLog>>,
    /// `storage.mode=hybrid`: appends never wait for an fsync (the store fsyncs such
    /// writes every `storage.hybrid_flush_ms`, `Store::flush_unsynced_every`).
    hybrid: bool,
    waiters: Waiters,
    /// A slot for a view's in-memory cache of this partition (the MQTT view keeps its
    /// recently appended messages there: `mqtt::recent`). The log never looks inside.
    pub(crate) view_cache: OnceLock<Arc<dyn Any + Send + Sync>>,
}

/// Batches read from a partition, plus its offsets at the time of the read.
pub(crate) struct ReadResult {
    pub(crate) batches: Vec<Bytes>,
    pub(crate) high_watermark: u64,
    pub(crate) log_start: u64,
}

impl PartitionLog {
    /// Loads a partition: from the store, or, with `memory` (its byte cap and the budget
    /// all memory partitions share), as an empty memory partition starting at its stored
    /// offset floor.
    pub(crate) fn load(
        store: &Store,
        topic_id: u32,
        index: u32,
        memory: Option<(usize, Arc<Budget>)>,
    ) -> Result<PartitionLog, storage::Error> {
        let (next, start, producers) = match &memory {
            None => Self::recover(store, topic_id, index)?,
            Some(_) => {
                let floor = store.mem_floor(topic_id, index)?.unwrap_or(0);
                (floor, floor, HashMap::new())
            }
        };
        Ok(PartitionLog {
            topic_id,
            index,
            state: Mutex::new(State {
                next_offset: next,
                producers,
                reload: false,
                floor: next,
            }),
            queued: Arc::new(AtomicU32::new(0)),
            mem: memory.map(|(cap, budget)| Mutex::new(MemLog::new(cap, budget))),
            hybrid: false,
            visible: AtomicU64::new(next),
            log_start: AtomicU64::new(start),
            waiters: Waiters::default(),
            view_cache: OnceLock::new(),
        })
    }

    fn recover(
        store: &Store,
        topic_id: u32,
        index: u32,
    ) -> Result<(u64, u64, HashMap<i64, ProducerState>), storage::Error> {
        let next = store
            .log_last(topic_id, index)?
            .map(|(base, b)| end_of(base, &b))
            .unwrap_or(0);
        // DeleteRecords may have set a start inside the first batch, or deleted every
        // batch (the next offset is then that start).
        let deleted_to = store.log_start(topic_id, index)?.unwrap_or(0);
        let next = next.max(deleted_to);
        let start = store
            .log_first(topic_id, index)?
            .map(|(base, _)| base)
            .unwrap_or(next)
            .max(deleted_to);
        let mut producers = HashMap::new();
        for (pid, v) in store.producer_states(topic_id, index)? {
            match ProducerState::decode(&v) {
                Some(s) => {
                    producers.insert(pid, s);
                }
                None => error!(
                    topic_id,
                    partition = index,
                    producer_id = pid,
                    "corrupt producer state skipped"
                ),
            }
        }
        Ok((next, start, producers))
    }

    pub(crate) fn high_watermark(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    /// `offset`, lowered to the high watermark (not below the log start): what a reader
    /// that may have been shown offsets past it (`mqtt::recent`) can store as its position.
    pub(crate) fn at_most_visible(&self, offset: u64) -> u64 {
        offset.min(self.high_watermark().max(self.log_start()))
    }

    pub(crate) fn log_start(&self) -> u64 {
        self.log_start.load(Ordering::Acquire)
    }

    pub(crate) fn set_log_start(&self, start: u64) {
        self.log_start.fetch_max(start, Ordering::AcqRel);
    }

    /// DeleteRecords: the partition now starts at `before` (the caller keeps it at most
    /// the high watermark). The start is stored durably with the deletion of the batches
    /// wholly below it; a batch holding it stays, and its records below are no longer
    /// served (Fetch returns whole batches; clients skip records below the offset they
    /// asked for, as with Kafka). Returns the partition's start afterwards.
    pub(crate) async fn delete_records(
        &self,
        store: &Store,
        before: u64,
    ) -> Result<u64, storage::Error> {
        if before <= self.log_start() {
            return Ok(self.log_start());
        }
        match &self.mem {
            Some(m) => {
                m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drop_before(before);
            }
            None => {
                let cut = store
                    .log_read(self.topic_id, self.index, before, 1, 1)?
                    .first()
                    .filter(|(base, b)| *base <= before && end_of(*base, b) > before)
                    .map_or(before, |(base, _)| *base);
                let mut set = WriteSet::default();
                set.put_log_start(self.topic_id, self.index, before);
                set.delete_log_before(self.topic_id, self.index, cut);
                store.write(set, true).await?;
            }
        }
        self.set_log_start(before);
        Ok(self.log_start())
    }

    /// A hybrid partition (`storage.mode=hybrid`): its appends never wait for an fsync.
    pub(crate) fn hybrid(self, hybrid: bool) -> PartitionLog {
        PartitionLog { hybrid, ..self }
    }

    /// Appends the batches of one produce request. `durable` asks for the sync policy.
    pub(crate) async fn append(
        &self,
        store: &Store,
        batches: Vec<Bytes>,
        durable: bool,
    ) -> Result<Appended, AppendError> {
        self.append_with(store, batches, durable, |_| false).await
    }

    /// [`PartitionLog::append`], calling `accepted(base_offset)` once the batches hold
    /// their offsets and are written or queued for the writer, before the wait for an
    /// fsync (never for a duplicate). If it returns `true` (an MQTT view keeps the
    /// messages and may deliver them before they are durable, `mqtt::recent`), the
    /// partition's waiters are woken then, not only once the high watermark passes them.
    /// A failed write leaves its offsets unused (a gap) rather than handing them out
    /// again: a view may have shown them.
    pub(crate) async fn append_with(
        &self,
        store: &Store,
        batches: Vec<Bytes>,
        durable: bool,
        accepted: impl FnOnce(u64) -> bool,
    ) -> Result<Appended, AppendError> {
        let durable = durable && !self.hybrid;
        let mut headers = Vec::with_capacity(batches.len());
        for b in &batches {
            let h = BatchHeader::parse(b)?;
            if h.is_transactional() || h.is_control() {
                return Err(AppendError::Transactional);
            }
            headers.push(h);
        }
        let (rx, appended) = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if self.mem.is_some() {
                let most: u64 = headers.iter().map(|h| h.offset_count()).sum();
                self.raise_floor(store, &mut st, most)?;
            }
            if st.reload {
                let (next, _, producers) = Self::recover(store, self.topic_id, self.index)?;
                st.next_offset = next.max(st.next_offset);
                st.producers = producers;
                st.reload = false;
            }
            let mut set = WriteSet::default();
            let mut first: Option<Appended> = None;
            let mut end = st.next_offset;
            let mut touched = Vec::new();
            let mut mem_batches = Vec::new();
            for (b, h) in batches.iter().zip(&headers) {
                if h.producer_id >= 0 {
                    match ProducerState::check(
                        st.producers.get(&h.producer_id),
                        h.producer_epoch,
                        h.base_sequence,
                    ) {
                        SeqCheck::Accept => {}
                        SeqCheck::Duplicate(e) => {
                            first.get_or_insert(Appended {
                                base_offset: e.base_offset,
                                end_offset: e.end_offset,
                                duplicate: true,
                            });
                            continue;
                        }
                        SeqCheck::OutOfOrder => return Err(AppendError::OutOfOrderSequence),
                        SeqCheck::StaleEpoch => return Err(AppendError::StaleEpoch),
                    }
                }
                let base = end;
                end = base + h.offset_count();
                let stamped = batch::with_base_offset(b, base);
                match &self.mem {
                    Some(_) => mem_batches.push((base, stamped)),
                    None => set.put_log(self.topic_id, self.index, base, stamped),
                }
                if h.producer_id >= 0 {
                    let last_seq = h.base_sequence.wrapping_add(h.last_offset_delta);
                    let e = SeqEntry {
                        first_seq: h.base_sequence,
                        last_seq,
                        base_offset: base,
                        end_offset: end,
                    };
                    st.producers
                        .entry(h.producer_id)
                        .or_default()
                        .record(h.producer_epoch, e);
                    touched.push(h.producer_id);
                }
                first.get_or_insert(Appended {
                    base_offset: base,
                    end_offset: end,
                    duplicate: false,
                });
            }
            let Some(appended) = first else {
                return Err(AppendError::Corrupt(batch::BatchError::Truncated(
                    "empty record set",
                )));
            };
            if let Some(mem) = &self.mem {
                let appended = self.append_memory(st, mem, mem_batches, end, appended);
                if !appended.duplicate {
                    accepted(appended.base_offset);
                }
                return Ok(appended);
            }
            for pid in touched {
                if let Some(s) = st.producers.get(&pid) {
                    set.put_producer(self.topic_id, self.index, pid, s.encode());
                }
            }
            if set.is_empty() {
                drop(st);
                return Ok(appended);
            }
            if self.queued.load(Ordering::Acquire) == 0 && !store.needs_sync(durable) {
                // Written on this thread under the lock: storage order is offset order.
                return match store.write_now(set) {
                    Ok(()) => {
                        st.next_offset = end;
                        drop(st);
                        self.visible.fetch_max(end, Ordering::AcqRel);
                        if !appended.duplicate {
                            accepted(appended.base_offset);
                        }
                        self.wake();
                        Ok(Appended {
                            end_offset: end,
                            ..appended
                        })
                    }
                    Err(e) => {
                        st.reload = true;
                        Err(AppendError::Storage(e))
                    }
                };
            }
            st.next_offset = end;
            self.queued.fetch_add(1, Ordering::AcqRel);
            (
                store.submit(set, durable, self.queued.clone()),
                Appended {
                    end_offset: end,
                    ..appended
                },
            )
        };
        if !appended.duplicate && accepted(appended.base_offset) {
            self.wake();
        }
        match rx.await {
            Ok(Ok(())) => {
                self.visible
                    .fetch_max(appended.end_offset, Ordering::AcqRel);
                self.wake();
                Ok(appended)
            }
            Ok(Err(e)) => {
                self.state.lock().unwrap_or_else(|p| p.into_inner()).reload = true;
                Err(AppendError::Storage(e))
            }
            Err(_) => {
                self.state.lock().unwrap_or_else(|p| p.into_inner()).reload = true;
                Err(AppendError::Storage(storage::Error::Closed))
            }
        }
    }

    /// The rest of [`PartitionLog::append`] for a memory partition, still under the
    /// partition's lock (`st`): `batches` (stamped with their base offsets, up to `end`)
    /// join the memory log and become readable.
    fn append_memory(
        &self,
        mut st: std::sync::MutexGuard<'_, State>,
        mem: &Mutex<MemLog>,
        batches: Vec<(u64, Bytes)>,
        end: u64,
        appended: Appended,
    ) -> Appended {
        if batches.is_empty() {
            return appended; // duplicates only
        }
        let mut start = None;
        {
            let mut m = mem.lock().unwrap_or_else(|p| p.into_inner());
            for (base, b) in batches {
                start = m.push(base, b).or(start);
            }
        }
        st.next_offset = end;
        // Under the lock, the high watermark before the log start: a reader never sees a
        // log start above the high watermark.
        self.visible.fetch_max(end, Ordering::AcqRel);
        if let Some(start) = start {
            self.set_log_start(start);
        }
        drop(st);
        self.wake();
        Appended {
            end_offset: end,
            ..appended
        }
    }

    /// Memory partitions: makes sure offsets up to `next_offset + count` lie below the
    /// stored floor, raising it by [`memory::RESERVE`] past them when they do not (one
    /// small write per that many offsets; without an fsync, like any write that needs
    /// none). Nothing changes when the write fails.
    fn raise_floor(&self, store: &Store, st: &mut State, count: u64) -> Result<(), storage::Error> {
        let need = st.next_offset + count;
        if need < st.floor {
            return Ok(());
        }
        let floor = need - need % memory::RESERVE + memory::RESERVE;
        let mut set = WriteSet::default();
        set.put_mem_floor(self.topic_id, self.index, floor);
        store.write_now(set)?;
        st.floor = floor;
        Ok(())
    }

    /// Entries from the one containing `from`, up to `max_entries`, whatever the high
    /// watermark (the contract of `Store::log_read`, for scans such as ListOffsets).
    pub(crate) fn scan(
        &self,
        store: &Store,
        from: u64,
        max_entries: usize,
    ) -> Result<Vec<(u64, Bytes)>, storage::Error> {
        self.entries(store, from, usize::MAX, max_entries)
    }

    fn entries(
        &self,
        store: &Store,
        from: u64,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<Vec<(u64, Bytes)>, storage::Error> {
        match &self.mem {
            Some(m) => {
                Ok(m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(from, max_bytes, max_entries))
            }
            None => store.log_read(self.topic_id, self.index, from, max_bytes, max_entries),
        }
    }

    /// Memory partitions: a new byte cap, applied from the next append.
    pub(crate) fn set_memory_cap(&self, cap: usize) {
        if let Some(m) = &self.mem {
            m.lock().unwrap_or_else(|p| p.into_inner()).set_cap(cap);
        }
    }

    /// Memory partitions: drops batches older than `cutoff_ms` (retention.ms; the store's
    /// partitions are swept by `retention`). Returns how many were dropped.
    pub(crate) fn expire_memory(&self, cutoff_ms: i64) -> u64 {
        let Some(m) = &self.mem else {
            return 0;
        };
        let (n, start) = m
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire(cutoff_ms);
        if let Some(start) = start {
            self.set_log_start(start);
        }
        n
    }

    /// Reads whole batches containing offsets from `offset` below the high watermark,
    /// up to `max_bytes` (at least one batch when any is available).
    pub(crate) fn read(
        &self,
        store: &Store,
        offset: u64,
        max_bytes: usize,
    ) -> Result<ReadResult, storage::Error> {
        let hwm = self.high_watermark();
        let log_start = self.log_start();
        let mut batches = Vec::new();
        if offset < hwm {
            let entries = self.entries(store, offset, max_bytes.max(1), 10_000)?;
            let mut total = 0usize;
            for (base, b) in entries {
                if base >= hwm {
                    break;
                }
                if end_of(base, &b) <= offset {
                    continue;
                }
                if !batches.is_empty() && total + b.len() > max_bytes {
                    break;
                }
                total += b.len();
                batches.push(b);
            }
        }
        Ok(ReadResult {
            batches,
            high_watermark: hwm,
            log_start,
        })
    }

    /// Registers `n` to be notified on the next append to this partition (once, however
    /// often it is registered before that append: a connection keeps one `Notify`).
    pub(crate) fn register(&self, n: &Arc<Notify>) {
        self.waiters.register(n);
    }

    fn wake(&self) {
        self.waiters.wake();
    }

    /// Waits until offsets below `end` are visible (a duplicate of an in-flight batch).
    pub(crate) async fn wait_visible(&self, end: u64) {
        let n = Arc::new(Notify::new());
        loop {
            self.register(&n);
            if self.high_watermark() >= end {
                return;
            }
            n.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kafka_protocol::records::Compression;

    use super::*;
    use crate::log::batch::tests::encode;
    use crate::storage::SyncPolicy;

    /// Durable appends go through the writer thread, the others straight to the store; a
    /// reader following the high watermark must still see every offset, in order, with no
    /// gap (a direct write overtaking a queued one would expose a gap).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mixed_durable_and_direct_appends_never_expose_a_gap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), SyncPolicy::Group).expect("open"));
        let part = Arc::new(PartitionLog::load(&store, 1, 0, None).expect("load"));
        const N: u64 = 400;
        let reader = {
            let (store, part) = (store.clone(), part.clone());
            tokio::spawn(async move {
                let mut next = 0u64;
                while next < N {
                    let r = part.read(&store, next, 1 << 20).expect("read");
                    for b in &r.batches {
                        let h = BatchHeader::parse(b).expect("header");
                        assert_eq!(h.base_offset as u64, next, "gap or reorder in the log");
                        next += h.offset_count();
                    }
                    if r.batches.is_empty() {
                        tokio::task::yield_now().await;
                    }
                }
                next
            })
        };
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let (store, part) = (store.clone(), part.clone());
            writers.push(tokio::spawn(async move {
                for i in 0..N / 4 {
                    let durable = (i + w) % 3 == 0;
                    let b = encode(1, Compression::None, -1, 0);
                    part.append(&store, vec![b], durable).await.expect("append");
                }
            }));
        }
        for w in writers {
            w.await.expect("writer");
        }
        assert_eq!(reader.await.expect("reader"), N);
        assert_eq!(part.high_watermark(), N);
        assert_eq!(part.queued.load(Ordering::Acquire), 0);
    }

    /// After a failed write (here: the state it leaves, its offsets handed out and a
    /// reload due) the next append does not reuse those offsets, which an MQTT view may
    /// have shown (`mqtt::recent`); a reader from inside the gap gets the next batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offsets_of_a_failed_write_are_not_handed_out_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), SyncPolicy::Group).expect("open"));
        let part = PartitionLog::load(&store, 1, 0, None).expect("load");
        let b = || encode(1, Compression::None, -1, 0);
        part.append(&store, vec![b()], true).await.expect("append");
        {
            let mut st = part.state.lock().expect("state");
            st.next_offset += 2;
            st.reload = true;
        }
        let a = part.append(&store, vec![b()], true).await.expect("append");
        assert_eq!(a.base_offset, 3);
        assert_eq!(part.high_watermark(), 4);
        let r = part.read(&store, 1, 1 << 20).expect("read");
        assert_eq!(bases(&r), vec![3]);
    }

    /// A hybrid partition's acks=all append does not wait for the writer's fsync; a
    /// persistent one does. The writer is held: nothing queued on it completes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hybrid_append_does_not_wait_for_the_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), SyncPolicy::Group).expect("open"));
        let hybrid = PartitionLog::load(&store, 1, 0, None)
            .expect("load")
            .hybrid(true);
        let persistent = Arc::new(PartitionLog::load(&store, 2, 0, None).expect("load"));
        let b = || encode(1, Compression::None, -1, 0);
        let hold = store.hold_writer();
        let waiting = {
            let (store, part) = (store.clone(), persistent.clone());
            tokio::spawn(async move { part.append(&store, vec![b()], true).await })
        };
        let a = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            hybrid.append(&store, vec![b(), b()], true),
        )
        .await
        .expect("the hybrid append returned while the writer is held")
        .expect("append");
        assert_eq!((a.base_offset, a.end_offset), (0, 2));
        assert_eq!(hybrid.high_watermark(), 2, "readable at once");
        assert!(store.is_dirty(), "written without an fsync");
        assert!(
            !waiting.is_finished(),
            "the persistent append waits for its fsync"
        );
        drop(hold);
        waiting.await.expect("join").expect("append");
        assert_eq!(persistent.high_watermark(), 1);
    }

    fn mem(cap: usize) -> Option<(usize, Arc<Budget>)> {
        Some((cap, Budget::new(usize::MAX)))
    }

    fn bases(r: &ReadResult) -> Vec<i64> {
        r.batches
            .iter()
            .map(|b| BatchHeader::parse(b).expect("header").base_offset)
            .collect()
    }

    /// A memory partition serves its appends (idempotence included) without writing one
    /// log entry; reloaded (a restart) it is empty and starts above every offset it gave.
    #[tokio::test]
    async fn a_memory_partition_writes_no_log_and_restarts_above_its_offsets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), SyncPolicy::Group).expect("open");
        let part = PartitionLog::load(&store, 1, 0, mem(1 << 20)).expect("load");
        let a = part
            .append(&store, vec![encode(3, Compression::None, 7, 0)], true)
            .await
            .expect("append");
        assert_eq!((a.base_offset, a.end_offset, a.duplicate), (0, 3, false));
        let b = part
            .append(&store, vec![encode(2, Compression::Zstd, -1, 0)], true)
            .await
            .expect("append");
        assert_eq!((b.base_offset, b.end_offset), (3, 5));
        let dup = part
            .append(&store, vec![encode(3, Compression::None, 7, 0)], true)
            .await
            .expect("duplicate");
        assert_eq!((dup.base_offset, dup.duplicate), (0, true));
        assert_eq!(bases(&part.read(&store, 0, 1 << 20).expect("read")), [0, 3]);
        assert_eq!(bases(&part.read(&store, 4, 1 << 20).expect("read")), [3]);
        assert_eq!(part.high_watermark(), 5);
        assert_eq!(
            store.log_last(1, 0).expect("log_last"),
            None,
            "no log entry"
        );
        assert_eq!(store.producer_states(1, 0).expect("producers"), vec![]);
        assert_eq!(store.mem_floor(1, 0).expect("floor"), Some(memory::RESERVE));
        drop(part);

        let part = PartitionLog::load(&store, 1, 0, mem(1 << 20)).expect("reload");
        assert_eq!(part.high_watermark(), memory::RESERVE);
        assert_eq!(part.log_start(), memory::RESERVE);
        assert!(part
            .read(&store, 0, 1 << 20)
            .expect("read")
            .batches
            .is_empty());
        let c = part
            .append(&store, vec![encode(1, Compression::None, -1, 0)], true)
            .await
            .expect("append");
        assert_eq!(c.base_offset, memory::RESERVE);
    }

    /// Offsets that would reach the stored floor raise it first.
    #[tokio::test]
    async fn an_append_reaching_the_floor_raises_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), SyncPolicy::None).expect("open");
        let mut set = WriteSet::default();
        set.put_mem_floor(1, 0, memory::RESERVE - 1);
        store.write_now(set).expect("write");
        let part = PartitionLog::load(&store, 1, 0, mem(1 << 20)).expect("load");
        assert_eq!(part.high_watermark(), memory::RESERVE - 1);
        let a = part
            .append(&store, vec![encode(3, Compression::None, -1, 0)], false)
            .await
            .expect("append");
        assert_eq!(a.end_offset, memory::RESERVE + 2);
        assert_eq!(
            store.mem_floor(1, 0).expect("floor"),
            Some(2 * memory::RESERVE)
        );
    }

    /// The byte cap drops the oldest batches and moves the log start; retention.ms drops
    /// old ones but never the last.
    #[tokio::test]
    async fn a_memory_partition_keeps_its_cap_and_expires_by_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), SyncPolicy::None).expect("open");
        let one = encode(4, Compression::None, -1, 0);
        let part = PartitionLog::load(&store, 1, 0, mem(one.len() * 2)).expect("load");
        for _ in 0..5 {
            part.append(&store, vec![one.clone()], false)
                .await
                .expect("append");
        }
        assert_eq!(part.log_start(), 12);
        assert_eq!(
            bases(&part.read(&store, 0, 1 << 20).expect("read")),
            [12, 16]
        );
        // The records' timestamps are 1000..1003.
        assert_eq!(part.expire_memory(1_000), 0);
        assert_eq!(part.expire_memory(5_000), 1);
        assert_eq!(part.log_start(), 16);
        assert_eq!(bases(&part.read(&store, 0, 1 << 20).expect("read")), [16]);
    }
}
