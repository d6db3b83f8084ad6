//! One S3-backed topic's live state: its partitions' indexes, the keys already indexed,
//! the fetches waiting on it and the rate each partition is read at.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::Notify;

use super::index::{Entry, PartIndex};
use super::split::Format;
use super::Spec;
use crate::log::waiters::Waiters;
use crate::log::Topic;

/// Bytes a partition was read at, per second, smoothed.
#[derive(Debug)]
pub(crate) struct Rate {
    since: Instant,
    bytes: u64,
    per_sec: f64,
}

impl Rate {
    fn new(now: Instant) -> Rate {
        Rate {
            since: now,
            bytes: 0,
            per_sec: 0.0,
        }
    }

    /// Counts `n` bytes served; the rate is folded in once a second.
    pub(crate) fn add(&mut self, n: u64, now: Instant) {
        self.bytes += n;
        let secs = now.duration_since(self.since).as_secs_f64();
        if secs >= 1.0 {
            let r = self.bytes as f64 / secs;
            self.per_sec = if self.per_sec == 0.0 {
                r
            } else {
                0.5 * self.per_sec + 0.5 * r
            };
            self.bytes = 0;
            self.since = now;
        }
    }

    pub(crate) fn per_sec(&self) -> f64 {
        self.per_sec
    }
}

pub(crate) struct SourceTopic {
    pub(crate) topic: Arc<Topic>,
    pub(crate) spec: Spec,
    pub(crate) format: Format,
    pub(crate) parts: RwLock<Vec<PartIndex>>,
    /// Keys indexed (or refused), so a listing indexes only new objects.
    known: Mutex<HashSet<Arc<str>>>,
    /// Objects found deleted from S3: their records are skipped.
    gone: Mutex<HashSet<(u32, u32)>>,
    waiters: Waiters,
    pub(crate) rates: Mutex<Vec<Rate>>,
    stopped: AtomicBool,
    pub(crate) stop_signal: Notify,
}

impl SourceTopic {
    /// State from the stored entries `(partition, first offset, value)`.
    pub(crate) fn new(
        topic: Arc<Topic>,
        spec: Spec,
        format: Format,
        stored: Vec<(u32, u64, Vec<u8>)>,
    ) -> SourceTopic {
        let mut parts: Vec<PartIndex> = (0..topic.partition_count())
            .map(|_| PartIndex::default())
            .collect();
        let mut known = HashSet::new();
        for (p, first, v) in stored {
            let Some(e) = Entry::decode(first, &v) else {
                continue;
            };
            let p = p as usize;
            if parts.len() <= p {
                parts.resize_with(p + 1, PartIndex::default);
            }
            if e.first == parts[p].end() {
                known.insert(e.key.clone());
                parts[p].push(e);
            }
        }
        SourceTopic {
            topic,
            spec,
            format,
            parts: RwLock::new(parts),
            known: Mutex::new(known),
            gone: Mutex::new(HashSet::new()),
            waiters: Waiters::default(),
            rates: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            stop_signal: Notify::new(),
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.topic.id
    }

    /// The high watermark of a partition (records indexed so far).
    pub(crate) fn end(&self, part: u32) -> u64 {
        self.parts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(part as usize)
            .map_or(0, PartIndex::end)
    }

    pub(crate) fn offset_for_time(&self, part: u32, ts_ms: Option<i64>) -> Option<(u64, i64)> {
        self.parts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(part as usize)?
            .offset_for_time(ts_ms)
    }

    pub(crate) fn knows(&self, key: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// Marks a key as handled without indexing it (too large, unreadable).
    pub(crate) fn refuse(&self, key: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Arc::from(key));
    }

    /// The partition the next object goes to and its first offset, after the entries
    /// `pending` (indexed, not yet published).
    pub(crate) fn next_slot(&self, pending: &[(u32, Entry)]) -> (u32, u64) {
        let parts = self.parts.read().unwrap_or_else(|p| p.into_inner());
        let count = self.topic.partition_count().max(1) as usize;
        let objects: usize = parts.iter().map(PartIndex::len).sum::<usize>() + pending.len();
        let p = objects % count;
        let end = pending
            .iter()
            .rev()
            .find(|(q, _)| *q as usize == p)
            .map(|(_, e)| e.end())
            .unwrap_or_else(|| parts.get(p).map_or(0, PartIndex::end));
        (p as u32, end)
    }

    /// Makes stored entries visible and wakes waiting fetches.
    pub(crate) fn publish(&self, entries: Vec<(u32, Entry)>) {
        {
            let mut parts = self.parts.write().unwrap_or_else(|p| p.into_inner());
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            for (p, e) in entries {
                let p = p as usize;
                if parts.len() <= p {
                    parts.resize_with(p + 1, PartIndex::default);
                }
                known.insert(e.key.clone());
                parts[p].push(e);
            }
        }
        self.wake();
    }

    pub(crate) fn mark_gone(&self, part: u32, index: u32) {
        self.gone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((part, index));
    }

    pub(crate) fn is_gone(&self, part: u32, index: u32) -> bool {
        self.gone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(part, index))
    }

    /// Registers `n` to be notified when the index grows or a load finishes.
    pub(crate) fn register(&self, n: &Arc<Notify>) {
        self.waiters.register(n);
    }

    pub(crate) fn wake(&self) {
        self.waiters.wake();
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop_signal.notify_one();
        self.wake();
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Counts bytes served from a partition; returns its rate in bytes per second.
    pub(crate) fn served(&self, part: u32, n: u64, now: Instant) -> f64 {
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let p = part as usize;
        if rates.len() <= p {
            rates.resize_with(p + 1, || Rate::new(now));
        }
        rates[p].add(n, now);
        rates[p].per_sec()
    }
}
