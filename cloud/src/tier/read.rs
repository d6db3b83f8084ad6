//! Reads below a tiered partition's local start (Kafka Fetch, and the MQTT view through
//! `mqtt::stored`): whole stored batches sliced out of cached segments (no copy), loads in
//! the background for segments not cached.

use std::sync::Arc;

use bytes::Bytes;

use super::{index, PartTier, Tiers};
use crate::log::batch::BatchHeader;
use crate::source::cache::Loaded;
use crate::source::Owner;

impl Tiers {
    /// Segment `index` of the partition, loading it if needed; `None` if not loaded
    /// within `wait`.
    pub(crate) async fn loaded(
        &self,
        pt: &Arc<PartTier>,
        index: u32,
        key: Arc<str>,
        wait: std::time::Duration,
    ) -> Option<Arc<Loaded>> {
        let id = (pt.topic_id, pt.partition, index);
        let deadline = tokio::time::Instant::now() + wait;
        let n = Arc::new(tokio::sync::Notify::new());
        loop {
            pt.register(&n);
            if let Some(l) = self.sources.lookup(&id) {
                return Some(l);
            }
            let owner: Arc<dyn Owner> = pt.clone();
            self.sources.load_for(owner, id, key.clone());
            if tokio::time::timeout_at(deadline, n.notified())
                .await
                .is_err()
            {
                return self.sources.lookup(&id);
            }
        }
    }

    /// Batches containing offsets from `offset`, up to `budget` bytes (at least one batch
    /// when `first`), from the segments in the cache. A segment not cached is loaded in
    /// the background and wakes the partition's waiters (`PartTier::register`); the read
    /// stops there.
    pub(crate) fn read(
        &self,
        pt: &Arc<PartTier>,
        offset: u64,
        mut budget: usize,
        first: bool,
        conn: u64,
    ) -> Vec<Bytes> {
        let (start_index, segs, len) = {
            let all = pt.segments.read().unwrap_or_else(|p| p.into_inner());
            let Some(i) = index::find(&all, offset) else {
                return Vec::new();
            };
            let segs: Vec<index::Segment> = all[i..].iter().take(4).cloned().collect();
            (all.dropped + i as u32, segs, all.dropped + all.len() as u32)
        };
        self.sources
            .seen(pt.topic_id, pt.partition, conn, start_index, len);
        let mut out: Vec<Bytes> = Vec::new();
        for (k, seg) in segs.iter().enumerate() {
            let id = (pt.topic_id, pt.partition, start_index + k as u32);
            let Some(l) = self.sources.lookup(&id) else {
                let owner: Arc<dyn Owner> = pt.clone();
                self.sources.load_for(owner, id, seg.key.clone());
                break;
            };
            for s in &l.spans {
                let b = l.bytes.slice(s.value.start as usize..s.value.end as usize);
                let Ok(h) = BatchHeader::parse(&b) else {
                    continue;
                };
                if h.base_offset as u64 + h.offset_count() <= offset {
                    continue;
                }
                if b.len() > budget && !(first && out.is_empty()) {
                    return out;
                }
                budget = budget.saturating_sub(b.len());
                out.push(b);
            }
        }
        out
    }
}
