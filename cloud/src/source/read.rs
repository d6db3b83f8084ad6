//! Fetch reads of S3-backed topics: record batches built from cached objects, loads in
//! the background for what is not cached, and prefetch ahead of the readers.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::kafka::batch::ProducerState;
use common::kafka::record_batch::{Codec, Compressor, Writer};
use object_store::ObjectStoreExt;
use tracing::warn;

use super::cache::{Loaded, ObjId};
use super::index::Entry;
use super::{split, SourceTopic, Sources, RETRY_AFTER, STAGED_BYTES};

/// Header naming the object a record came from.
pub(super) const KEY_HEADER: &[u8] = b"s3.key";
/// Objects loaded ahead of a reader, at most.
const PREFETCH_OBJECTS: usize = 64;

/// Whom a background load is for: where the object is, how it splits, who waits for it.
pub(crate) trait Owner: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn bucket(&self) -> &str;
    fn format(&self) -> split::Format;
    /// The object is not in S3 (and not cached).
    fn gone(&self, id: ObjId);
    /// A load finished (or failed): waiting fetches look again.
    fn wake(&self);
}

impl Owner for SourceTopic {
    fn name(&self) -> &str {
        &self.topic.name
    }

    fn bucket(&self) -> &str {
        &self.spec.bucket
    }

    fn format(&self) -> split::Format {
        self.format
    }

    fn gone(&self, id: ObjId) {
        self.mark_gone(id.1, id.2);
    }

    fn wake(&self) {
        SourceTopic::wake(self);
    }
}

/// What a fetch of one partition got.
pub(crate) struct Read {
    pub(crate) batches: Vec<Bytes>,
    pub(crate) high_watermark: u64,
}

impl Sources {
    /// Batches of `part` from `offset`, at most `budget` bytes (at least one record when
    /// `first`, as KIP-74 asks). What is not in memory is loaded in the background and
    /// wakes the topic's waiters when there.
    pub(crate) fn read(
        self: &Arc<Self>,
        topic: &Arc<SourceTopic>,
        part: u32,
        offset: u64,
        mut budget: usize,
        first: bool,
        conn: u64,
    ) -> Read {
        let now = Instant::now();
        let (hwm, entries, start, len) = {
            let parts = topic.parts.read().unwrap_or_else(|p| p.into_inner());
            let Some(ix) = parts.get(part as usize) else {
                return Read {
                    batches: Vec::new(),
                    high_watermark: 0,
                };
            };
            let hwm = ix.end();
            let Some(start) = ix.find(offset) else {
                return Read {
                    batches: Vec::new(),
                    high_watermark: hwm,
                };
            };
            // The entries a read and its prefetch may touch (cloned: loads run unlocked).
            let last = (start + PREFETCH_OBJECTS + 1).min(ix.len());
            let entries: Vec<Entry> = (start..last).filter_map(|i| ix.get(i).cloned()).collect();
            (hwm, entries, start, ix.len() as u32)
        };
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .positions
            .seen(topic.id(), part, conn, start as u32, len, now);
        let mut batches = Vec::new();
        let mut served = 0usize;
        let mut stop = entries.len();
        for (k, e) in entries.iter().enumerate() {
            let index = (start + k) as u32;
            if e.count == 0 {
                continue;
            }
            let id = (topic.id(), part, index);
            let l = self.lookup(&id);
            if l.is_none() && !topic.is_gone(part, index) {
                self.load(topic, id, e.key.clone());
                stop = k;
                break;
            }
            let from = offset.max(e.first);
            let skip = (from - e.first) as usize;
            let keyed = topic.format == split::Format::Object;
            let first = first && batches.is_empty();
            let (batch, n, whole) = build(e, l.as_deref(), skip, budget, first, keyed);
            if let Some(b) = batch {
                budget = budget.saturating_sub(b.len());
                served += b.len();
                batches.push(b);
            }
            if n == 0 || !whole || budget == 0 {
                stop = k + 1;
                break;
            }
        }
        let rate = topic.served(part, served as u64, now);
        self.prefetch(
            topic,
            part,
            start,
            &entries[stop.min(entries.len())..],
            stop,
            rate,
        );
        Read {
            batches,
            high_watermark: hwm,
        }
    }

    /// Records a reader's position for the cache's eviction rule (reads of objects that
    /// are not S3-backed topics': tiered segments).
    pub(crate) fn seen(&self, topic: u32, part: u32, conn: u64, index: u32, len: u32) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .positions
            .seen(topic, part, conn, index, len, Instant::now());
    }

    pub(crate) fn lookup(&self, id: &ObjId) -> Option<Arc<Loaded>> {
        if let Some(l) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Some(l);
        }
        self.staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, l)| l.clone())
    }

    /// Loads the objects after the reader's stop point that it will read within
    /// `s3.cache.prefetch_ms` at its measured rate (at least the next one).
    fn prefetch(
        self: &Arc<Self>,
        topic: &Arc<SourceTopic>,
        part: u32,
        start: usize,
        ahead: &[Entry],
        stop: usize,
        rate: f64,
    ) {
        let window = (rate * self.config.cache.prefetch_ms as f64 / 1000.0) as u64;
        let cap = self.config.cache.memory_bytes / 2;
        let mut bytes = 0u64;
        for (k, e) in ahead.iter().enumerate() {
            if k > 0 && (bytes >= window || bytes + e.size > cap.max(e.size)) {
                break;
            }
            let index = (start + stop + k) as u32;
            if e.count == 0 || topic.is_gone(part, index) {
                continue;
            }
            bytes += e.size;
            let id = (topic.id(), part, index);
            if self.lookup(&id).is_none() {
                self.load(topic, id, e.key.clone());
            }
        }
    }

    /// Loads `id` in the background (once at a time; not again before [`RETRY_AFTER`]
    /// after a failure, then by itself): from the disk tier if there, else from S3.
    fn load(self: &Arc<Self>, topic: &Arc<SourceTopic>, id: ObjId, key: Arc<str>) {
        let owner: Arc<dyn Owner> = topic.clone();
        self.load_for(owner, id, key);
    }

    /// [`Sources::load`] for any owner (an S3-backed topic, a tiered partition).
    /// A load asked for within [`RETRY_AFTER`] of a failure starts when that has passed,
    /// so a reader waiting for the owner's wake-up (an MQTT cursor) is woken then too.
    pub(crate) fn load_for(self: &Arc<Self>, topic: Arc<dyn Owner>, id: ObjId, key: Arc<str>) {
        let delay = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .and_then(|t| RETRY_AFTER.checked_sub(t.elapsed()));
        if !self
            .loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
        {
            return;
        }
        let me = self.clone();
        let load = async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let r = me.fetch_object(&topic, id, &key).await;
            match r {
                Ok(()) => {
                    me.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                }
                Err(object_store::Error::NotFound { .. }) => {
                    warn!(topic = %topic.name(), key = %key,
                          "object deleted from S3 and not cached");
                    topic.gone(id);
                    // Not asked for again at once by a reader that keeps waiting for it.
                    me.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, Instant::now());
                }
                Err(e) => {
                    warn!(topic = %topic.name(), key = %key, cause = %e, "object read failed");
                    me.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, Instant::now());
                }
            }
            me.loading
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            topic.wake();
        };
        match &self.runtime {
            Some(rt) => drop(rt.spawn(load)),
            None => drop(tokio::spawn(load)),
        }
    }

    async fn fetch_object(
        self: &Arc<Self>,
        topic: &Arc<dyn Owner>,
        id: ObjId,
        key: &str,
    ) -> Result<(), object_store::Error> {
        let _permit = self.gets.acquire().await;
        let on_disk = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_disk(&id);
        let mut from_disk = None;
        if let Some(path) = on_disk {
            match tokio::fs::read(&path).await {
                Ok(b) => from_disk = Some(Bytes::from(b)),
                Err(e) => {
                    warn!(path = %path.display(), cause = %e, "disk cache read failed");
                    self.cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .drop_disk(&id);
                }
            }
        }
        let (bytes, fresh) = match from_disk {
            Some(b) => (b, false),
            None => {
                let client = self.client(topic.bucket()).map_err(|e| match e {
                    super::Error::S3(e) => e,
                    other => object_store::Error::Generic {
                        store: "S3",
                        source: Box::new(std::io::Error::other(other.to_string())),
                    },
                })?;
                let path = object_store::path::Path::from(key);
                let bytes = client.get(&path).await?.bytes().await?;
                let m = crate::metrics::get();
                m.s3_gets.inc();
                m.s3_get_bytes.inc_by(bytes.len() as u64);
                (bytes, true)
            }
        };
        let spans = match split::spans(topic.format(), &bytes) {
            Ok(s) => s,
            Err(e) => {
                warn!(topic = %topic.name(), key, cause = %e, "object no longer splits");
                Vec::new()
            }
        };
        let l = Arc::new(Loaded { bytes, spans });
        if fresh {
            self.offer(id, l).await;
        } else {
            self.keep(id, l);
        }
        Ok(())
    }

    /// Caches an object just read from S3: in memory if admitted, on disk if admitted,
    /// and staged for the waiting fetch otherwise.
    pub(super) async fn offer(&self, id: ObjId, l: Arc<Loaded>) {
        let reserved = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve_disk(id, l.bytes.len(), Instant::now());
        if let Some((path, old)) = reserved {
            for f in old {
                let _ = tokio::fs::remove_file(f).await;
            }
            if let Err(e) = tokio::fs::write(&path, &l.bytes).await {
                warn!(path = %path.display(), cause = %e, "disk cache write failed");
                self.cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drop_disk(&id);
            }
        }
        self.keep(id, l);
    }

    /// Keeps a loaded object in memory if admitted, else staged for the waiting fetch.
    fn keep(&self, id: ObjId, l: Arc<Loaded>) {
        let admitted = {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            c.put_memory(id, l.clone(), Instant::now());
            c.get(&id).is_some()
        };
        if !admitted {
            let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
            staged.retain(|(k, _)| *k != id);
            staged.push((id, l));
            let mut total: usize = staged.iter().map(|(_, l)| l.bytes.len()).sum();
            while total > STAGED_BYTES && staged.len() > 1 {
                total -= staged[0].1.bytes.len();
                staged.remove(0);
            }
        }
    }
}

/// One batch of the entry's records from record `skip`, within `budget` bytes (at least
/// one record when `first`); `keyed`: records without a key of their own are keyed by the
/// object key. A record the object no longer has (`l` is `None`: deleted from S3; or it
/// was rewritten with fewer records) is a tombstone: null value, so every offset below
/// the high watermark holds a record and readers never stall at a gap. Returns the batch,
/// the records in it, and whether it reaches the entry's last record.
fn build(
    e: &Entry,
    l: Option<&Loaded>,
    skip: usize,
    budget: usize,
    first: bool,
    keyed: bool,
) -> (Option<Bytes>, usize, bool) {
    let mut w = Writer::with_capacity(0);
    let mut size = common::kafka::record_batch::HEADER_LEN;
    let total = e.count as usize;
    let spans = l.map_or(&[][..], |l| &l.spans[..]);
    let mut n = 0;
    for r in skip..total {
        let (key, value): (Option<&[u8]>, Option<&[u8]>) = match (spans.get(r), l) {
            (Some(s), Some(l)) => (
                s.key.as_deref(),
                Some(&l.bytes[s.value.start as usize..s.value.end as usize]),
            ),
            _ => (None, None),
        };
        let key = key.or(keyed.then_some(e.key.as_bytes()));
        let rec = value.map_or(0, <[u8]>::len) + key.map_or(0, <[u8]>::len) + e.key.len() + 32;
        if size + rec > budget && !(first && n == 0) {
            break;
        }
        size += rec;
        w.push(
            e.modified_ms,
            key,
            value,
            [(KEY_HEADER, Some(e.key.as_bytes()))],
        );
        n += 1;
    }
    if n == 0 {
        return (None, 0, false);
    }
    let batch = match w.finish(
        ProducerState::NONE,
        -1,
        Codec::None,
        &mut Compressor::default(),
    ) {
        Ok(b) => b,
        Err(err) => {
            warn!(key = %e.key, cause = %err, "record batch not built");
            return (None, 0, false);
        }
    };
    // The base offset is outside the CRC (which covers attributes onwards).
    let base = (e.first + skip as u64) as i64;
    let batch = match batch.try_into_mut() {
        Ok(mut m) => {
            m[0..8].copy_from_slice(&base.to_be_bytes());
            m.freeze()
        }
        Err(b) => {
            let mut v = b.to_vec();
            v[0..8].copy_from_slice(&base.to_be_bytes());
            Bytes::from(v)
        }
    };
    (Some(batch), n, skip + n >= total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::kafka::record_batch;

    fn entry(first: u64, count: u32) -> Entry {
        Entry {
            first,
            count,
            size: 0,
            modified_ms: 1_700_000_000_000,
            key: Arc::from("p/obj.txt"),
        }
    }

    fn records(b: &Bytes) -> Vec<record_batch::RecordView> {
        assert_eq!(crate::log::batch::BatchHeader::parse(b).map(|_| ()), Ok(()));
        record_batch::read(b)
            .expect("readable")
            .map(|r| r.expect("record"))
            .collect()
    }

    #[test]
    fn batches_start_at_the_asked_record_and_respect_the_budget() {
        let bytes = Bytes::from_static(b"aa\nbb\ncc\ndd\n");
        let spans = split::spans(split::Format::Line, &bytes).unwrap();
        let l = Loaded { bytes, spans };
        let e = entry(100, 4);
        let (b, n, whole) = build(&e, Some(&l), 1, 1 << 20, true, false);
        let b = b.expect("a batch");
        assert_eq!((n, whole), (3, true));
        let r = records(&b);
        let offsets: Vec<i64> = r.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![101, 102, 103]);
        assert_eq!(r[0].value.as_deref(), Some(&b"bb"[..]));
        assert_eq!(r[0].key, None, "line records have no key");
        assert_eq!(r[0].timestamp, e.modified_ms);
        assert_eq!(
            r[0].headers,
            vec![(
                Bytes::from_static(KEY_HEADER),
                Some(Bytes::from_static(b"p/obj.txt"))
            )]
        );
        // A budget below one record: nothing, unless it is the fetch's first batch.
        assert_eq!(build(&e, Some(&l), 0, 10, false, false).1, 0);
        let (b, n, whole) = build(&e, Some(&l), 0, 10, true, false);
        assert_eq!((n, whole), (1, false));
        assert_eq!(records(&b.unwrap())[0].offset, 100);
    }

    #[test]
    fn an_object_record_is_keyed_by_the_object_key() {
        let bytes = Bytes::from_static(b"\x00binary\xff");
        let spans = split::spans(split::Format::Object, &bytes).unwrap();
        let l = Loaded { bytes, spans };
        let (b, _, _) = build(&entry(7, 1), Some(&l), 0, 1 << 20, true, true);
        let r = records(&b.unwrap());
        assert_eq!(r[0].key.as_deref(), Some(&b"p/obj.txt"[..]));
        assert_eq!(r[0].value.as_deref(), Some(&b"\x00binary\xff"[..]));
        assert_eq!(r[0].offset, 7);
    }

    #[test]
    fn records_an_object_no_longer_has_are_tombstones() {
        // Deleted from S3: every record a tombstone, keyed as before.
        let (b, n, whole) = build(&entry(7, 3), None, 1, 1 << 20, true, true);
        assert_eq!((n, whole), (2, true));
        let r = records(&b.unwrap());
        assert_eq!(r.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![8, 9]);
        assert!(r.iter().all(|r| r.value.is_none()));
        assert_eq!(r[0].key.as_deref(), Some(&b"p/obj.txt"[..]));
        // Rewritten with fewer lines: the missing ones are tombstones.
        let bytes = Bytes::from_static(b"only\n");
        let spans = split::spans(split::Format::Line, &bytes).unwrap();
        let l = Loaded { bytes, spans };
        let r = records(
            &build(&entry(0, 3), Some(&l), 0, 1 << 20, true, false)
                .0
                .unwrap(),
        );
        let values: Vec<Option<&[u8]>> = r.iter().map(|r| r.value.as_deref()).collect();
        assert_eq!(values, vec![Some(&b"only"[..]), None, None]);
    }
}
