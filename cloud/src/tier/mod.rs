//! `storage.mode=tiered`: recent batches stay in RocksDB, older ones move to object
//! storage and stay readable at their offsets (design brief section 3).
//!
//! Per partition of a tiered topic, every `storage.tiered.check_interval_ms`
//! (`upload.rs`):
//! 1. While the partition's local bytes exceed its local limit (topic config
//!    `local.retention.bytes`, -1 meaning unlimited; else `storage.tiered.local_bytes`) by
//!    a segment, its oldest
//!    durable batches, about `storage.tiered.segment_bytes`, are concatenated as stored (a
//!    Kafka log segment) and PUT as one object,
//!    `<prefix>/<topic>-<topic id>/<partition>/<base offset, 20 digits>.log`.
//! 2. The segment is recorded in the store, durably ([`index`]); fetches below the
//!    partition's local start now read it.
//! 3. The partition's local start moves to the segment's end.
//! 4. One check later, the local batches below it are deleted (a fetch that chose the
//!    local path just before step 3 still finds them).
//!
//! A crash between 2 and 4 leaves local batches below the last segment's end: the next
//! check moves the local start and deletes them (steps 3-4), never uploading them again.
//!
//! Reads below the local start (`read.rs`) go through the S3-backed topics' cache
//! (`crate::source`): memory, disk, then a background GET that wakes the fetch.
//!
//! Retention (`retention.ms`, `retention.bytes`) drops whole segments from the front,
//! each check: those whose newest record is older than `retention.ms`, and while the
//! partition (segments plus local bytes) is larger than `retention.bytes`. The index
//! entries go first (durably), then the objects. Local batches are never deleted by
//! retention (they are at most the local limit plus a segment).

pub mod index;
mod read;
mod upload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use object_store::ObjectStoreExt;
use serde::Deserialize;
use tracing::warn;

use crate::log::waiters::Waiters;
use crate::log::Topic;
use crate::source::cache::ObjId;
use crate::source::split::Format;
use crate::source::{Owner, Sources, Spec};
use crate::storage::Store;
use index::Segment;

pub(crate) use upload::run;

/// Topic config overriding `storage.tiered.local_bytes` (-2: use it, Kafka's default).
pub const LOCAL_BYTES: &str = "local.retention.bytes";

/// Cloud config `storage.tiered`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TieredConfig {
    /// `s3://bucket/prefix` receiving tiered topics' segments (endpoint and credentials
    /// from the `s3` section). `None`: `storage.mode=tiered` is refused.
    pub target: Option<String>,
    /// Bytes each partition keeps local.
    pub local_bytes: u64,
    /// Bytes uploaded as one object.
    pub segment_bytes: u64,
    pub check_interval_ms: u64,
}

impl Default for TieredConfig {
    fn default() -> Self {
        TieredConfig {
            target: None,
            local_bytes: 256 << 20,
            segment_bytes: 16 << 20,
            check_interval_ms: 5_000,
        }
    }
}

impl TieredConfig {
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(t) = &self.target {
            Spec::parse(t).map_err(|e| ("storage.tiered.target", e.to_string()))?;
        }
        if !(1024..=1 << 30).contains(&self.segment_bytes) {
            return Err((
                "storage.tiered.segment_bytes",
                "must be between 1024 and 1073741824".into(),
            ));
        }
        if self.check_interval_ms == 0 {
            return Err((
                "storage.tiered.check_interval_ms",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A partition's segments, oldest first, and how many were dropped from the front by
/// retention since start: segment `i` of the list is cache object `dropped + i`, so
/// cached objects keep their ids when older segments go.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegList {
    list: Vec<Segment>,
    pub(crate) dropped: u32,
}

impl std::ops::Deref for SegList {
    type Target = Vec<Segment>;

    fn deref(&self) -> &Vec<Segment> {
        &self.list
    }
}

impl std::ops::DerefMut for SegList {
    fn deref_mut(&mut self) -> &mut Vec<Segment> {
        &mut self.list
    }
}

/// One tiered partition's segments and the fetches waiting for their loads.
pub(crate) struct PartTier {
    name: String,
    bucket: String,
    topic_id: u32,
    partition: u32,
    segments: RwLock<SegList>,
    waiters: Waiters,
    /// Loads finished (or failed) so far: a reader that found its segment loading waits
    /// for this to change ([`PartTier::loads`]).
    loads: AtomicU64,
    /// Local bytes counted up to an offset, and where local batches may be deleted below.
    acct: Mutex<Acct>,
}

#[derive(Default)]
struct Acct {
    counted_to: u64,
    bytes: u64,
    delete_below: Option<u64>,
}

impl PartTier {
    /// The first tiered offset, if any segment was uploaded.
    pub(crate) fn start(&self) -> Option<u64> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .map(|s| s.base)
    }

    /// The end of the last uploaded segment (its last offset + 1), if any.
    pub(crate) fn end(&self) -> Option<u64> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .map(|s| s.end)
    }

    /// The first segment holding a record at or after `ts_ms`, with its cache index.
    pub(crate) fn segment_for_time(&self, ts_ms: i64) -> Option<(u32, Segment)> {
        let segs = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let i = segs.iter().position(|s| s.max_ts >= ts_ms)?;
        Some((segs.dropped + i as u32, segs[i].clone()))
    }

    pub(crate) fn offset_for_time(&self, ts_ms: i64) -> Option<u64> {
        index::offset_for_time(
            &self.segments.read().unwrap_or_else(|p| p.into_inner()),
            ts_ms,
        )
    }

    pub(crate) fn register(&self, n: &Arc<tokio::sync::Notify>) {
        self.waiters.register(n);
    }

    /// Counts finished loads: read it before a read that may start one, and the read's
    /// load has finished once it differs.
    pub(crate) fn loads(&self) -> u64 {
        self.loads.load(Ordering::Acquire)
    }
}

impl Owner for PartTier {
    fn name(&self) -> &str {
        &self.name
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn format(&self) -> Format {
        Format::Segment
    }

    fn gone(&self, id: ObjId) {
        warn!(topic = %self.name, partition = self.partition, segment = id.2,
              "a tiered segment is missing from S3: its offsets cannot be read");
    }

    fn wake(&self) {
        self.loads.fetch_add(1, Ordering::AcqRel);
        self.waiters.wake();
    }
}

/// Every tiered partition.
pub(crate) struct Tiers {
    config: TieredConfig,
    target: Option<Spec>,
    sources: Arc<Sources>,
    store: Arc<Store>,
    parts: RwLock<HashMap<(u32, u32), Arc<PartTier>>>,
}

impl Tiers {
    pub(crate) fn new(config: TieredConfig, sources: Arc<Sources>, store: Arc<Store>) -> Tiers {
        let target = config.target.as_deref().and_then(|t| Spec::parse(t).ok());
        Tiers {
            config,
            target,
            sources,
            store,
            parts: RwLock::new(HashMap::new()),
        }
    }

    /// Whether `storage.mode=tiered` can be served (a target is configured).
    pub(crate) fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Loads a tiered topic's segments (at start).
    pub(crate) fn open(&self, topic: &Topic) -> Result<(), crate::storage::Error> {
        let mut by_part: HashMap<u32, Vec<Segment>> = HashMap::new();
        for (p, base, v) in self.store.tier_segments(topic.id)? {
            if let Some(s) = Segment::decode(base, &v) {
                by_part.entry(p).or_default().push(s);
            }
        }
        for (p, segs) in by_part {
            let pt = self.part_or_new(topic, p);
            *pt.segments.write().unwrap_or_else(|e| e.into_inner()) = SegList {
                list: segs,
                dropped: 0,
            };
        }
        Ok(())
    }

    /// A partition's tier state, if it has one.
    pub(crate) fn part(&self, topic_id: u32, partition: u32) -> Option<Arc<PartTier>> {
        self.parts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(topic_id, partition))
            .cloned()
    }

    fn part_or_new(&self, topic: &Topic, partition: u32) -> Arc<PartTier> {
        if let Some(p) = self.part(topic.id, partition) {
            return p;
        }
        let mut parts = self.parts.write().unwrap_or_else(|p| p.into_inner());
        parts
            .entry((topic.id, partition))
            .or_insert_with(|| {
                Arc::new(PartTier {
                    name: topic.name.to_string(),
                    bucket: self
                        .target
                        .as_ref()
                        .map(|t| t.bucket.clone())
                        .unwrap_or_default(),
                    topic_id: topic.id,
                    partition,
                    segments: RwLock::new(SegList::default()),
                    waiters: Waiters::default(),
                    loads: AtomicU64::new(0),
                    acct: Mutex::new(Acct::default()),
                })
            })
            .clone()
    }

    /// Forgets a deleted topic and deletes its segments from S3 in the background.
    pub(crate) fn forget(&self, topic_id: u32) {
        let gone: Vec<Arc<PartTier>> = {
            let mut parts = self.parts.write().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<(u32, u32)> = parts.keys().filter(|k| k.0 == topic_id).copied().collect();
            keys.iter().filter_map(|k| parts.remove(k)).collect()
        };
        let Some(target) = &self.target else {
            return;
        };
        let keys: Vec<Arc<str>> = gone
            .iter()
            .flat_map(|p| {
                p.segments
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|s| s.key.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        if keys.is_empty() {
            return;
        }
        let client = match self.sources.client(&target.bucket) {
            Ok(c) => c,
            Err(e) => {
                warn!(cause = %e, "tiered segments of a deleted topic not deleted");
                return;
            }
        };
        tokio::spawn(async move {
            for k in keys {
                let path = object_store::path::Path::from(k.as_ref());
                if let Err(e) = client.delete(&path).await {
                    warn!(key = %k, cause = %e, "tiered segment of a deleted topic not deleted");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
