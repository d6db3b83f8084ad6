//! The indexer task of one S3-backed topic: lists the prefix, indexes objects it has not
//! seen, then waits `s3.refresh_ms` and lists again.
//!
//! Entries are written to the store (durably) in chunks, and only then published to
//! fetches, so a crash never shows an offset that a restart would give to another
//! object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::{ObjectMeta, ObjectStoreExt};
use tracing::{info, warn};

use super::cache::Loaded;
use super::index::Entry;
use super::split::{self, Format};
use super::{Error, SourceTopic, Sources};
use crate::storage::WriteSet;

/// Entries stored and published together (at most; also every [`CHUNK_TIME`]).
const CHUNK: usize = 512;
const CHUNK_TIME: Duration = Duration::from_millis(500);

pub(super) async fn run(sources: Arc<Sources>, topic: Arc<SourceTopic>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if topic.stopped() {
            return;
        }
        let wait = match index_once(&sources, &topic).await {
            Ok(n) => {
                if n > 0 {
                    info!(topic = %topic.topic.name, objects = n, "source indexed");
                }
                backoff = Duration::from_secs(1);
                if sources.config.refresh_ms == 0 {
                    return;
                }
                Duration::from_millis(sources.config.refresh_ms)
            }
            Err(e) => {
                warn!(topic = %topic.topic.name, bucket = %topic.spec.bucket,
                      prefix = %topic.spec.prefix, cause = %e, "source listing failed");
                backoff = (backoff * 2).min(Duration::from_secs(60));
                backoff
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = topic.stop_signal.notified() => return,
        }
    }
}

/// One pass over the prefix; returns the number of objects indexed.
async fn index_once(sources: &Arc<Sources>, topic: &Arc<SourceTopic>) -> Result<usize, Error> {
    let client = sources.client(&topic.spec.bucket)?;
    let prefix = topic.spec.path();
    let mut metas: Vec<ObjectMeta> = client.list(prefix.as_ref()).try_collect().await?;
    metas.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
    let mut pending: Vec<(u32, Entry)> = Vec::new();
    let mut loaded: Vec<(usize, Arc<Loaded>)> = Vec::new();
    let mut since = Instant::now();
    let mut total = 0;
    for m in metas {
        if topic.stopped() {
            return Ok(total);
        }
        let key: &str = m.location.as_ref();
        if topic.knows(key) {
            continue;
        }
        if m.size > sources.config.max_object_bytes {
            warn!(topic = %topic.topic.name, key, size = m.size,
                  limit = sources.config.max_object_bytes,
                  "object larger than s3.max_object_bytes: not indexed");
            topic.refuse(key);
            continue;
        }
        let count = match topic.format {
            Format::Object => 1,
            Format::Line | Format::Tar | Format::Segment => {
                let bytes = client.get(&m.location).await?.bytes().await?;
                match split::spans(topic.format, &bytes) {
                    Ok(spans) => {
                        let n = u32::try_from(spans.len()).unwrap_or(u32::MAX);
                        loaded.push((pending.len(), Arc::new(Loaded { bytes, spans })));
                        n
                    }
                    Err(e) => {
                        warn!(topic = %topic.topic.name, key, cause = %e,
                              "object not readable as {:?}: indexed with no records",
                              topic.format);
                        0
                    }
                }
            }
        };
        let (p, first) = topic.next_slot(&pending);
        pending.push((
            p,
            Entry {
                first,
                count,
                size: m.size,
                modified_ms: m.last_modified.timestamp_millis(),
                key: Arc::from(key),
            },
        ));
        total += 1;
        if pending.len() >= CHUNK || since.elapsed() >= CHUNK_TIME {
            flush(sources, topic, &mut pending, &mut loaded).await?;
            since = Instant::now();
        }
    }
    flush(sources, topic, &mut pending, &mut loaded).await?;
    Ok(total)
}

/// Stores `pending` durably, publishes it, and offers the objects read while indexing to
/// the cache.
async fn flush(
    sources: &Arc<Sources>,
    topic: &Arc<SourceTopic>,
    pending: &mut Vec<(u32, Entry)>,
    loaded: &mut Vec<(usize, Arc<Loaded>)>,
) -> Result<(), Error> {
    if pending.is_empty() || topic.stopped() {
        return Ok(());
    }
    let mut set = WriteSet::default();
    for (p, e) in pending.iter() {
        set.put_source_entry(topic.id(), *p, e.first, e.encode());
    }
    sources.store.write(set, true).await?;
    // Object ids (partition, index) of what is about to be published.
    let mut ids = Vec::with_capacity(pending.len());
    {
        let parts = topic.parts.read().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<u32> = parts.iter().map(|ix| ix.len() as u32).collect();
        for (p, _) in pending.iter() {
            let p = *p as usize;
            if next.len() <= p {
                next.resize(p + 1, 0);
            }
            ids.push((p as u32, next[p]));
            next[p] += 1;
        }
    }
    topic.publish(std::mem::take(pending));
    for (i, l) in loaded.drain(..) {
        let (p, index) = ids[i];
        sources.offer((topic.id(), p, index), l).await;
    }
    Ok(())
}
