//! Log compaction (`cleanup.policy=compact`, Kafka's meaning): a partition keeps at least
//! the newest record of every key; older records of a key are removed, offsets never
//! change. Consumers see gaps in the offsets, as on a compacted Kafka topic.
//!
//! Each retention check, per partition of a compacted topic (persistent or hybrid):
//! 1. The *dirty* section is the batches from where the previous pass ended (offset 0
//!    after a start) up to, not including, the partition's last batch (Kafka likewise
//!    never cleans the active segment), stopping before a batch with a record newer than
//!    `min.compaction.lag.ms`. Its keys are read into a map of key -> newest offset (at
//!    most [`MAX_KEY_BYTES`] of keys: a larger section is cleaned up to where the map
//!    filled, the rest next time).
//! 2. Nothing happens unless the dirty bytes are at least `min.cleanable.dirty.ratio` of
//!    the bytes up to the section's end (the clean bytes are what the last pass left).
//! 3. Every batch from the start up to the section's end is rewritten without the
//!    records the map supersedes (a newer record of the key exists) and without
//!    tombstones (null value) whose timestamp is older than `delete.retention.ms`. A
//!    rewritten batch keeps its base offset, offset span, producer id, epoch and base
//!    sequence, so every kept record keeps its offset and sequence; it is re-compressed
//!    with its codec (snappy, which the writer lacks, becomes gzip). A batch left empty
//!    is deleted. Records without a key are kept (Produce refuses them on compacted
//!    topics).
//! 4. The rewrites go to the store in sets of [`WRITE_SET_BATCHES`], unsynced: a crash
//!    loses only removals of superseded records, and the next pass after a start
//!    compacts the whole partition again. A set leaves out batches that a DeleteRecords
//!    removed since they were read (checked under `Log::rewrites`, which DeleteRecords
//!    holds while it writes), so a rewrite never brings one back.
//!
//! A Fetch running meanwhile reads each batch either before or after its rewrite; both
//! hold the newest record of every key. Appends go above the last batch, which is never
//! touched.

use std::collections::HashMap;

use bytes::Bytes;
use common::kafka::batch::ProducerState;
use common::kafka::record_batch::{Codec, Compressor, Rewrite, Writer};
use tracing::{debug, warn};

use super::batch::{self, BatchHeader};
use super::{Log, StorageMode, Topic};
use crate::storage::{self, WriteSet};

/// Key bytes one pass may map (plus about 48 bytes of map entry per key).
pub(crate) const MAX_KEY_BYTES: usize = 64 << 20;
/// Batches read from the store at a time.
const SCAN_CHUNK: usize = 256;
/// Rewritten or deleted batches per store write.
const WRITE_SET_BATCHES: usize = 256;

/// Where each compacted partition's last pass ended, and the bytes it left below that.
#[derive(Default)]
pub(crate) struct Compactor {
    parts: HashMap<(u32, u32), Cleaned>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Cleaned {
    to: u64,
    bytes: u64,
}

/// What one pass over the topics did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pass {
    pub(crate) partitions: u64,
    pub(crate) records_removed: u64,
    pub(crate) batches_rewritten: u64,
    pub(crate) batches_deleted: u64,
}

/// The topic settings a pass applies.
struct Settings {
    lag_ms: i64,
    ratio: f64,
    delete_retention_ms: i64,
}

fn settings(topic: &Topic) -> Settings {
    let num = |k: &str, d: i64| {
        topic
            .config(k)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(d)
    };
    Settings {
        lag_ms: num("min.compaction.lag.ms", 0),
        ratio: topic
            .config("min.cleanable.dirty.ratio")
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.5),
        delete_retention_ms: num("delete.retention.ms", 86_400_000),
    }
}

impl Compactor {
    /// One pass over every compacted topic.
    pub(crate) fn sweep(
        &mut self,
        log: &Log,
        rt: &tokio::runtime::Handle,
        now_ms: i64,
    ) -> Result<Pass, storage::Error> {
        let mut pass = Pass::default();
        let mut live = std::collections::HashSet::new();
        for topic in log.all() {
            if !topic.compacted()
                || !matches!(topic.mode(), StorageMode::Persistent | StorageMode::Hybrid)
            {
                continue;
            }
            live.insert(topic.id);
            for p in 0..topic.partition_count() {
                self.partition(log, rt, &topic, p, now_ms, &mut pass)?;
            }
        }
        self.parts.retain(|(t, _), _| live.contains(t));
        Ok(pass)
    }

    fn partition(
        &mut self,
        log: &Log,
        rt: &tokio::runtime::Handle,
        topic: &Topic,
        p: u32,
        now_ms: i64,
        pass: &mut Pass,
    ) -> Result<(), storage::Error> {
        let store = &log.store;
        let Some((last_base, _)) = store.log_last(topic.id, p)? else {
            return Ok(());
        };
        let s = settings(topic);
        let cleaned = self.parts.get(&(topic.id, p)).copied().unwrap_or_default();
        // 1. The dirty section's keys.
        let mut newest: HashMap<Bytes, u64> = HashMap::new();
        let mut key_bytes = 0usize;
        let mut dirty = 0u64;
        let mut end = cleaned.to;
        'scan: loop {
            let chunk = store.log_read(topic.id, p, end, usize::MAX, SCAN_CHUNK)?;
            let n = chunk.len();
            let floor = end;
            for (base, b) in chunk.iter().filter(|(base, _)| *base >= floor) {
                if *base >= last_base || key_bytes >= MAX_KEY_BYTES {
                    break 'scan;
                }
                let Ok(h) = BatchHeader::parse(b) else {
                    break 'scan;
                };
                if h.max_timestamp > now_ms.saturating_sub(s.lag_ms) {
                    break 'scan;
                }
                match batch::records(b) {
                    Ok(recs) => {
                        for r in recs {
                            if let (Some(k), true) = (r.key, r.offset >= 0) {
                                key_bytes += k.len();
                                newest.insert(k, r.offset as u64);
                            }
                        }
                    }
                    Err(e) => {
                        warn!(topic = %topic.name, partition = p, offset = base, cause = %e,
                              "batch not compacted: undecodable");
                    }
                }
                dirty += b.len() as u64;
                end = base + h.offset_count();
            }
            if n < SCAN_CHUNK {
                break;
            }
        }
        // 2. Dirty enough?
        let total = cleaned.bytes + dirty;
        if dirty == 0 || (dirty as f64) < s.ratio * total as f64 {
            return Ok(());
        }
        // 3-4. Rewrite everything below the section's end.
        let cutoff = now_ms.saturating_sub(s.delete_retention_ms);
        let keep = |k: Option<&Bytes>, offset: i64, value_null: bool, ts: i64| -> bool {
            let Some(k) = k else { return true };
            if newest.get(k).is_some_and(|&o| o > offset as u64) {
                return false;
            }
            !(value_null && ts < cutoff)
        };
        let mut left = 0u64;
        let mut pending: Vec<Change> = Vec::new();
        let mut zstd = Compressor::default();
        let mut from = 0u64;
        'rewrite: loop {
            let chunk = store.log_read(topic.id, p, from, usize::MAX, SCAN_CHUNK)?;
            let n = chunk.len();
            let floor = from;
            for (base, b) in chunk.iter().filter(|(base, _)| *base >= floor) {
                if *base >= end {
                    break 'rewrite;
                }
                from = base + 1;
                match rewrite(*base, b, &keep, &mut zstd) {
                    Ok(Outcome::Unchanged) => left += b.len() as u64,
                    Ok(Outcome::Empty(removed)) => {
                        pending.push((*base, batch::end_of(*base, b), None));
                        pass.batches_deleted += 1;
                        pass.records_removed += removed;
                    }
                    Ok(Outcome::Rewritten(nb, removed)) => {
                        left += nb.len() as u64;
                        pending.push((*base, batch::end_of(*base, b), Some(nb)));
                        pass.batches_rewritten += 1;
                        pass.records_removed += removed;
                    }
                    Err(e) => {
                        left += b.len() as u64;
                        warn!(topic = %topic.name, partition = p, offset = base, cause = %e,
                              "batch not compacted");
                    }
                }
                if pending.len() >= WRITE_SET_BATCHES {
                    write(log, rt, topic, p, std::mem::take(&mut pending))?;
                }
            }
            if n < SCAN_CHUNK {
                break;
            }
        }
        write(log, rt, topic, p, pending)?;
        pass.partitions += 1;
        debug!(topic = %topic.name, partition = p, end, dirty, left, "compacted");
        self.parts.insert(
            (topic.id, p),
            Cleaned {
                to: end,
                bytes: left,
            },
        );
        Ok(())
    }
}

/// One batch's change: (base, end of its offsets, the rewrite or `None` to delete it).
type Change = (u64, u64, Option<Bytes>);

/// Writes `changes` unless the topic was deleted meanwhile (its batches would come back
/// as garbage under an id nothing reads), leaving out batches a DeleteRecords removed
/// since they were read: those wholly below the partition's start, checked under
/// `Log::rewrites`, which DeleteRecords holds while it writes.
fn write(
    log: &Log,
    rt: &tokio::runtime::Handle,
    topic: &Topic,
    p: u32,
    changes: Vec<Change>,
) -> Result<(), storage::Error> {
    if changes.is_empty() || log.get(&topic.name).is_none_or(|t| t.id != topic.id) {
        return Ok(());
    }
    rt.block_on(async {
        let _order = log.rewrites.lock().await;
        let start = match log.loaded_partition(topic, p) {
            Some(part) => part.log_start(),
            None => log.store.log_start(topic.id, p)?.unwrap_or(0),
        };
        let mut set = WriteSet::default();
        for (base, end, new) in changes {
            match new {
                _ if end <= start => {}
                Some(b) => set.put_log(topic.id, p, base, b),
                None => set.delete_log(topic.id, p, base),
            }
        }
        if set.is_empty() {
            return Ok(());
        }
        log.store.write(set, false).await
    })
}

enum Outcome {
    Unchanged,
    /// Every record removed (how many).
    Empty(u64),
    /// The new batch, and how many records it lost.
    Rewritten(Bytes, u64),
}

/// Batch `b` at `base` without the records `keep` refuses.
fn rewrite(
    base: u64,
    b: &Bytes,
    keep: &impl Fn(Option<&Bytes>, i64, bool, i64) -> bool,
    zstd: &mut Compressor,
) -> Result<Outcome, String> {
    let h = BatchHeader::parse(b).map_err(|e| e.to_string())?;
    if h.is_control() {
        return Ok(Outcome::Unchanged);
    }
    let recs = batch::records(b)?;
    let total = recs.len() as u64;
    let kept: Vec<_> = recs
        .into_iter()
        .filter(|r| keep(r.key.as_ref(), r.offset, r.value.is_none(), r.timestamp))
        .collect();
    let removed = total - kept.len() as u64;
    if removed == 0 {
        return Ok(Outcome::Unchanged);
    }
    if kept.is_empty() {
        return Ok(Outcome::Empty(removed));
    }
    let mut w = Writer::default();
    for r in &kept {
        let headers = r.headers.iter().map(|(k, v)| (&k[..], v.as_deref()));
        let delta = i32::try_from(r.offset - base as i64).map_err(|_| "offset delta")?;
        w.push_at(
            delta,
            r.timestamp,
            r.key.as_deref(),
            r.value.as_deref(),
            headers,
        );
    }
    let codec = match h.attributes & 0x07 {
        0 => Codec::None,
        3 => Codec::Lz4,
        4 => Codec::Zstd,
        _ => Codec::Gzip,
    };
    let span = Rewrite {
        base_offset: base as i64,
        last_offset_delta: h.last_offset_delta,
        attributes: h.attributes,
        producer: ProducerState {
            producer_id: h.producer_id,
            producer_epoch: h.producer_epoch,
        },
        base_sequence: h.base_sequence,
    };
    let nb = w
        .finish_rewrite(span, codec, zstd)
        .map_err(|e| e.to_string())?;
    Ok(Outcome::Rewritten(nb, removed))
}

#[cfg(test)]
#[path = "compaction_tests.rs"]
mod tests;
