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

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::error;

use super::batch::{self, BatchHeader};
use super::producer::{ProducerState, SeqCheck, SeqEntry};
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
    waiters: Mutex<Vec<Weak<Notify>>>,
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

fn end_of(base: u64, b: &[u8]) -> u64 {
    base + BatchHeader::parse(b).map(|h| h.offset_count()).unwrap_or(1)
}

impl PartitionLog {
    pub(crate) fn load(
        store: &Store,
        topic_id: u32,
        index: u32,
    ) -> Result<PartitionLog, storage::Error> {
        let (next, start, producers) = Self::recover(store, topic_id, index)?;
        Ok(PartitionLog {
            topic_id,
            index,
            state: Mutex::new(State {
                next_offset: next,
                producers,
                reload: false,
            }),
            queued: Arc::new(AtomicU32::new(0)),
            visible: AtomicU64::new(next),
            log_start: AtomicU64::new(start),
            waiters: Mutex::new(Vec::new()),
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
        let start = store
            .log_first(topic_id, index)?
            .map(|(base, _)| base)
            .unwrap_or(next);
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

    pub(crate) fn log_start(&self) -> u64 {
        self.log_start.load(Ordering::Acquire)
    }

    pub(crate) fn set_log_start(&self, start: u64) {
        self.log_start.fetch_max(start, Ordering::AcqRel);
    }

    /// Appends the batches of one produce request. `durable` asks for the sync policy.
    pub(crate) async fn append(
        &self,
        store: &Store,
        batches: Vec<Bytes>,
        durable: bool,
    ) -> Result<Appended, AppendError> {
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
            if st.reload {
                let (next, _, producers) = Self::recover(store, self.topic_id, self.index)?;
                st.next_offset = next;
                st.producers = producers;
                st.reload = false;
            }
            let mut set = WriteSet::default();
            let mut first: Option<Appended> = None;
            let mut end = st.next_offset;
            let mut touched = Vec::new();
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
                set.put_log(
                    self.topic_id,
                    self.index,
                    base,
                    batch::with_base_offset(b, base),
                );
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
            for pid in touched {
                if let Some(s) = st.producers.get(&pid) {
                    set.put_producer(self.topic_id, self.index, pid, s.encode());
                }
            }
            let Some(appended) = first else {
                return Err(AppendError::Corrupt(batch::BatchError::Truncated(
                    "empty record set",
                )));
            };
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
            let entries =
                store.log_read(self.topic_id, self.index, offset, max_bytes.max(1), 10_000)?;
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
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if w.iter().any(|x| std::ptr::eq(x.as_ptr(), Arc::as_ptr(n))) {
            return;
        }
        if w.len() >= 64 {
            w.retain(|x| x.strong_count() > 0);
        }
        w.push(Arc::downgrade(n));
    }

    fn wake(&self) {
        // Drained in place: the list keeps its capacity for the next registrations.
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for w in waiters.drain(..) {
            if let Some(n) = w.upgrade() {
                n.notify_one();
            }
        }
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
        let part = Arc::new(PartitionLog::load(&store, 1, 0).expect("load"));
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
}
