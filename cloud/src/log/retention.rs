//! Retention: deletes a partition's oldest batches once they are older than `retention.ms`
//! (by the batch's max timestamp) or while the partition is larger than `retention.bytes`.
//! A deletion is one range delete. The last batch is always kept so the partition's end
//! offset survives a restart (Kafka likewise keeps the active segment). Only topics whose
//! `cleanup.policy` includes `delete`; the same task then compacts the topics whose
//! policy includes `compact` ([`super::compaction`]).

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::batch::BatchHeader;
use super::compaction::Compactor;
use super::{Log, StorageMode, Topic};
use crate::storage::{self, WriteSet};

const SCAN_CHUNK: usize = 256;

/// Runs a sweep, then a compaction pass, every `every` until the process ends.
pub(crate) async fn run(log: Arc<Log>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let compactor = Arc::new(std::sync::Mutex::new(Compactor::default()));
    loop {
        tick.tick().await;
        let log = log.clone();
        let handle = tokio::runtime::Handle::current();
        let compactor = compactor.clone();
        let res = tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let deleted = sweep(&log, &handle, now);
            let mut c = compactor.lock().unwrap_or_else(|p| p.into_inner());
            (deleted, c.sweep(&log, &handle, now))
        })
        .await;
        match res {
            Ok((deleted, compacted)) => {
                if let Ok(n) = deleted {
                    crate::metrics::get().retention_batches.inc_by(n);
                }
                if let Ok(p) = compacted {
                    crate::metrics::get()
                        .compaction_records
                        .inc_by(p.records_removed);
                }
                match deleted {
                    Ok(n) if n > 0 => debug!(deleted_batches = n, "retention sweep"),
                    Ok(_) => {}
                    Err(e) => warn!(cause = %e, "retention sweep failed"),
                }
                match compacted {
                    Ok(p) if p.partitions > 0 => info!(
                        partitions = p.partitions,
                        records_removed = p.records_removed,
                        batches_rewritten = p.batches_rewritten,
                        batches_deleted = p.batches_deleted,
                        "compaction pass"
                    ),
                    Ok(_) => {}
                    Err(e) => warn!(cause = %e, "compaction pass failed"),
                }
            }
            Err(e) => warn!(cause = %e, "retention sweep panicked"),
        }
    }
}

/// One pass over every topic; returns the number of batches deleted.
pub(crate) fn sweep(
    log: &Log,
    rt: &tokio::runtime::Handle,
    now_ms: i64,
) -> Result<u64, storage::Error> {
    let mut deleted = 0;
    for topic in log.all() {
        let ms: i64 = topic
            .config("retention.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1);
        let bytes: i64 = topic
            .config("retention.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1);
        if (ms < 0 && bytes < 0) || !topic.deletes() {
            continue;
        }
        if topic.mode() == StorageMode::Tiered {
            // Applied to the uploaded segments by the tiering task (`crate::tier`):
            // deleting local batches here would drop what was not uploaded yet.
            continue;
        }
        if topic.mode() == StorageMode::Memory {
            // Memory partitions enforce their byte cap on append; only time is left, and
            // only loaded partitions hold anything.
            if ms >= 0 {
                for p in 0..topic.partition_count() {
                    if let Some(part) = log.loaded_partition(&topic, p) {
                        deleted += part.expire_memory(now_ms.saturating_sub(ms));
                    }
                }
            }
            continue;
        }
        for p in 0..topic.partition_count() {
            deleted += sweep_partition(
                log,
                rt,
                &topic,
                p,
                now_ms.saturating_sub(ms.max(0)),
                ms >= 0,
                bytes,
            )?;
        }
    }
    Ok(deleted)
}

fn sweep_partition(
    log: &Log,
    rt: &tokio::runtime::Handle,
    topic: &Topic,
    p: u32,
    cutoff_ms: i64,
    by_time: bool,
    max_bytes: i64,
) -> Result<u64, storage::Error> {
    let store = &log.store;
    // Total size only when a byte limit applies (it needs a full scan).
    let mut excess: i64 = if max_bytes >= 0 {
        let mut total = 0i64;
        let mut from = 0u64;
        loop {
            let chunk = store.log_read(topic.id, p, from, usize::MAX, SCAN_CHUNK)?;
            let n = chunk.len();
            for (base, b) in &chunk {
                if *base >= from {
                    total += b.len() as i64;
                }
            }
            match chunk.last() {
                Some((base, _)) if n == SCAN_CHUNK => from = base + 1,
                _ => break,
            }
        }
        total - max_bytes
    } else {
        0
    };
    let mut new_start: Option<u64> = None;
    let mut count = 0u64;
    let mut from = 0u64;
    'scan: loop {
        let chunk = store.log_read(topic.id, p, from, usize::MAX, SCAN_CHUNK + 1)?;
        let floor = from;
        let mut iter = chunk.iter().filter(|(base, _)| *base >= floor).peekable();
        while let Some((_, b)) = iter.next() {
            let Some((next_base, _)) = iter.peek() else {
                // The last batch of this chunk: continue from it unless it is the last overall.
                if chunk.len() <= SCAN_CHUNK {
                    break 'scan;
                }
                break;
            };
            let expired = by_time
                && BatchHeader::parse(b)
                    .map(|h| h.max_timestamp < cutoff_ms)
                    .unwrap_or(false);
            let too_big = excess > 0;
            if !expired && !too_big {
                break 'scan;
            }
            excess -= b.len() as i64;
            count += 1;
            new_start = Some(*next_base);
            from = *next_base;
        }
        if chunk.len() <= SCAN_CHUNK {
            break;
        }
    }
    if let Some(start) = new_start {
        let mut set = WriteSet::default();
        set.delete_log_before(topic.id, p, start);
        rt.block_on(store.write(set, false))?;
        if let Some(part) = log.loaded_partition(topic, p) {
            part.set_log_start(start);
        }
    }
    Ok(count)
}
