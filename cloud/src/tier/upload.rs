//! The upload task: moves tiered partitions' oldest batches to object storage (the
//! numbered steps are in the module docs of `crate::tier`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use object_store::{ObjectStoreExt, PutPayload};
use tracing::{debug, warn};

use super::index::Segment;
use super::{PartTier, Tiers, LOCAL_BYTES};
use crate::log::batch::{end_of, BatchHeader};
use crate::log::partition::PartitionLog;
use crate::log::{Log, StorageMode, Topic};
use crate::storage::{Store, WriteSet};

/// Batches read from the store per step.
const CHUNK: usize = 256;

#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::Error),
    #[error("s3: {0}")]
    S3(#[from] object_store::Error),
    #[error("{0}")]
    Source(#[from] crate::source::Error),
    #[error("store read task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Checks every tiered partition each `storage.tiered.check_interval_ms`.
pub(crate) async fn run(tiers: Arc<Tiers>, log: Arc<Log>) {
    if !tiers.enabled() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(tiers.config.check_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The tiered topics, found again only when topics were created or deleted (listing
    // and sorting every topic each check costs about a second a minute with a million).
    let mut tiered: (u64, Vec<Arc<Topic>>) = (0, Vec::new());
    loop {
        tick.tick().await;
        let generation = log.generation();
        if generation != tiered.0 {
            let topics = log.all().into_iter();
            tiered = (
                generation,
                topics.filter(|t| t.mode() == StorageMode::Tiered).collect(),
            );
        }
        for topic in &tiered.1 {
            for p in 0..topic.partition_count() {
                let Ok(part) = log.partition(topic, p as i32) else {
                    continue;
                };
                if let Err(e) = check(&tiers, topic, p, &part).await {
                    warn!(topic = %topic.name, partition = p, cause = %e, "tiering failed");
                }
            }
        }
    }
}

pub(super) async fn check(
    tiers: &Tiers,
    topic: &Topic,
    p: u32,
    part: &PartitionLog,
) -> Result<(), Error> {
    let pt = tiers.part_or_new(topic, p);
    let store = tiers.store.clone();
    // Step 4 of the previous check, and recovery after a crash between steps 2 and 4.
    let pending = {
        let mut a = pt.acct.lock().unwrap_or_else(|e| e.into_inner());
        a.delete_below.take()
    };
    if let Some(end) = pt.end() {
        if part.log_start() < end {
            part.set_log_start(end);
            pt.acct
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .delete_below = Some(end);
        }
    }
    if let Some(below) = pending {
        let mut set = WriteSet::default();
        set.delete_log_before(topic.id, p, below);
        store.write(set, false).await?;
    }
    count_local(&store, topic.id, p, part, &pt).await?;
    upload_due(tiers, topic, p, part, &pt).await?;
    expire(tiers, topic, p, &pt).await
}

/// Steps 1-3 while the partition holds more than its local limit plus a segment.
async fn upload_due(
    tiers: &Tiers,
    topic: &Topic,
    p: u32,
    part: &PartitionLog,
    pt: &PartTier,
) -> Result<(), Error> {
    let store = tiers.store.clone();
    let limit = match topic
        .config(LOCAL_BYTES)
        .and_then(|v| v.parse::<i64>().ok())
    {
        // Unlimited: everything stays local.
        Some(-1) => return Ok(()),
        Some(v) if v >= 0 => v as u64,
        _ => tiers.config.local_bytes,
    };
    let seg_bytes = tiers.config.segment_bytes;
    loop {
        let bytes = pt.acct.lock().unwrap_or_else(|e| e.into_inner()).bytes;
        if bytes < limit.saturating_add(seg_bytes) {
            return Ok(());
        }
        let from = part.log_start();
        let hwm = part.high_watermark();
        let s2 = store.clone();
        let (tid, max) = (topic.id, seg_bytes as usize);
        let batches =
            tokio::task::spawn_blocking(move || collect(&s2, tid, p, from, hwm, max)).await??;
        let Some(seg) = upload(tiers, topic, p, batches).await? else {
            return Ok(());
        };
        // Step 2: durable before any fetch can be sent to it.
        let mut set = WriteSet::default();
        set.put_tier_segment(topic.id, p, seg.base, seg.encode());
        store.write(set, true).await?;
        let (end, size) = (seg.end, seg.size);
        pt.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(seg);
        // Step 3; step 4 waits for the next check.
        part.set_log_start(end);
        let mut a = pt.acct.lock().unwrap_or_else(|e| e.into_inner());
        a.bytes = a.bytes.saturating_sub(size);
        a.delete_below = Some(end);
        debug!(topic = %topic.name, partition = p, end, size, "segment tiered");
    }
}

/// Retention: drops whole segments from the front (module docs of `crate::tier`).
async fn expire(tiers: &Tiers, topic: &Topic, p: u32, pt: &PartTier) -> Result<(), Error> {
    let limit = |key: &str| -> i64 { topic.config(key).and_then(|v| v.parse().ok()).unwrap_or(-1) };
    let (ms, max_bytes) = (limit("retention.ms"), limit("retention.bytes"));
    if ms < 0 && max_bytes < 0 {
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let local = pt.acct.lock().unwrap_or_else(|e| e.into_inner()).bytes;
    let doomed: Vec<Segment> = {
        let segs = pt.segments.read().unwrap_or_else(|e| e.into_inner());
        let mut total = segs.iter().map(|s| s.size).sum::<u64>() + local;
        let mut out = Vec::new();
        for s in segs.iter() {
            let old = ms >= 0 && s.max_ts < now.saturating_sub(ms);
            let big = max_bytes >= 0 && total > max_bytes as u64;
            if !old && !big {
                break;
            }
            total -= s.size;
            out.push(s.clone());
        }
        out
    };
    if doomed.is_empty() {
        return Ok(());
    }
    let mut set = WriteSet::default();
    for s in &doomed {
        set.delete_tier_segment(topic.id, p, s.base);
    }
    tiers.store.write(set, true).await?;
    {
        let mut segs = pt.segments.write().unwrap_or_else(|e| e.into_inner());
        segs.drain(..doomed.len());
        segs.dropped += doomed.len() as u32;
    }
    debug!(topic = %topic.name, partition = p, segments = doomed.len(), "tiered segments expired");
    if let Some(target) = &tiers.target {
        let client = tiers.sources.client(&target.bucket)?;
        for s in doomed {
            let path = object_store::path::Path::from(s.key.as_ref());
            if let Err(e) = client.delete(&path).await {
                warn!(key = %s.key, cause = %e, "expired tiered segment not deleted from S3");
            }
        }
    }
    Ok(())
}

/// Adds the sizes of local batches not counted yet (below the high watermark).
async fn count_local(
    store: &Arc<Store>,
    tid: u32,
    p: u32,
    part: &PartitionLog,
    pt: &PartTier,
) -> Result<(), Error> {
    let (from, known) = {
        let a = pt.acct.lock().unwrap_or_else(|e| e.into_inner());
        (a.counted_to.max(part.log_start()), a.bytes)
    };
    let hwm = part.high_watermark();
    if from >= hwm {
        return Ok(());
    }
    let s2 = store.clone();
    let (added, to) = tokio::task::spawn_blocking(move || -> Result<(u64, u64), Error> {
        let mut added = 0u64;
        let mut at = from;
        loop {
            let chunk = s2.log_read(tid, p, at, usize::MAX, CHUNK)?;
            let n = chunk.len();
            let mut moved = false;
            for (base, b) in &chunk {
                if *base < at {
                    continue;
                }
                let end = end_of(*base, b);
                if end > hwm {
                    return Ok((added, at));
                }
                added += b.len() as u64;
                at = end;
                moved = true;
            }
            if n < CHUNK || !moved {
                return Ok((added, at));
            }
        }
    })
    .await??;
    let mut a = pt.acct.lock().unwrap_or_else(|e| e.into_inner());
    if a.bytes == known {
        a.bytes += added;
        a.counted_to = to;
    }
    Ok(())
}

/// The oldest local batches from `from`, below `hwm`, up to `max` bytes (at least one).
fn collect(
    store: &Store,
    tid: u32,
    p: u32,
    from: u64,
    hwm: u64,
    max: usize,
) -> Result<Vec<(u64, Bytes)>, Error> {
    let mut out = Vec::new();
    let mut total = 0usize;
    let mut at = from;
    loop {
        let chunk = store.log_read(tid, p, at, usize::MAX, CHUNK)?;
        let n = chunk.len();
        for (base, b) in chunk {
            if base < at {
                continue;
            }
            let end = end_of(base, &b);
            if end > hwm || (!out.is_empty() && total + b.len() > max) {
                return Ok(out);
            }
            total += b.len();
            at = end;
            out.push((base, b));
        }
        if n < CHUNK || total >= max {
            return Ok(out);
        }
    }
}

/// Step 1: PUTs `batches` as one object; returns its segment.
async fn upload(
    tiers: &Tiers,
    topic: &Topic,
    p: u32,
    batches: Vec<(u64, Bytes)>,
) -> Result<Option<Segment>, Error> {
    let (Some((base, _)), Some((last_base, last))) = (batches.first(), batches.last()) else {
        return Ok(None);
    };
    let Some(target) = &tiers.target else {
        return Ok(None);
    };
    let base = *base;
    let end = end_of(*last_base, last);
    let mut body = BytesMut::with_capacity(batches.iter().map(|(_, b)| b.len()).sum());
    let mut max_ts = i64::MIN;
    for (_, b) in &batches {
        if let Ok(h) = BatchHeader::parse(b) {
            max_ts = max_ts.max(h.max_timestamp);
        }
        body.extend_from_slice(b);
    }
    let size = body.len() as u64;
    let mut key = String::new();
    if !target.prefix.is_empty() {
        key.push_str(&target.prefix);
        key.push('/');
    }
    key.push_str(&format!("{}-{}/{p}/{base:020}.log", topic.name, topic.id));
    let client = tiers.sources.client(&target.bucket)?;
    client
        .put(
            &object_store::path::Path::from(key.as_str()),
            PutPayload::from(body.freeze()),
        )
        .await?;
    let m = crate::metrics::get();
    m.tier_segments.inc();
    m.tier_bytes.inc_by(size);
    Ok(Some(Segment {
        base,
        end,
        size,
        max_ts,
        key: Arc::from(key.as_str()),
    }))
}
