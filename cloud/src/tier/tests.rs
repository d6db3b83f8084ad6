//! Tiering against object_store's in-memory store: upload, local deletion, reads back
//! through the cache, crash recovery. The system test with a real S3 endpoint (moto) and
//! Kafka clients is `tests/python/test_tiered_topics.py`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::records::Compression;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::Notify;

use super::*;
use crate::log::batch::tests::encode;
use crate::log::batch::BatchHeader;
use crate::log::partition::PartitionLog;
use crate::log::{Log, NewTopic};
use crate::source::{S3CacheConfig, S3Config};
use crate::storage::SyncPolicy;

struct Fixture {
    store: Arc<Store>,
    log: Arc<Log>,
    tiers: Arc<Tiers>,
    s3: Arc<InMemory>,
    topic: Arc<Topic>,
}

async fn fixture(dir: &std::path::Path, s3: Arc<InMemory>) -> Fixture {
    let store = Arc::new(Store::open(&dir.join("store"), SyncPolicy::Group).expect("store"));
    let log = Arc::new(Log::open(store.clone()).expect("log").with_tiering(true));
    let s3cfg = S3Config {
        cache: S3CacheConfig {
            disk_bytes: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let sources = Arc::new(Sources::new(store.clone(), s3cfg, dir).expect("sources"));
    let client: Arc<dyn ObjectStore> = s3.clone();
    sources.set_client("b", client);
    let cfg = TieredConfig {
        target: Some("s3://b/tier".into()),
        local_bytes: 0,
        segment_bytes: 1024,
        check_interval_ms: 1,
    };
    let tiers = Arc::new(Tiers::new(cfg, sources, store.clone()));
    if log.get("t").is_none() {
        let mut configs = BTreeMap::new();
        configs.insert("storage.mode".to_string(), "tiered".to_string());
        // The test batches' timestamps are old: only retention.bytes, where set.
        configs.insert("retention.ms".to_string(), "-1".to_string());
        let r = log
            .create(
                vec![NewTopic {
                    name: "t".into(),
                    partitions: 1,
                    configs,
                }],
                false,
            )
            .await;
        assert_eq!(r, vec![Ok(())]);
    }
    let topic = log.get("t").expect("topic");
    tiers.open(&topic).expect("open");
    Fixture {
        store,
        log,
        tiers,
        s3,
        topic,
    }
}

/// Creates a one-partition tiered topic with `configs` besides the mode; returns it and
/// its partition with `batches` batches of 5 old-timestamped records appended.
async fn tiered_topic(
    f: &Fixture,
    name: &str,
    configs: &[(&str, &str)],
    batches: usize,
) -> (Arc<Topic>, Arc<PartitionLog>) {
    let mut c = BTreeMap::new();
    c.insert("storage.mode".to_string(), "tiered".to_string());
    for (k, v) in configs {
        c.insert(k.to_string(), v.to_string());
    }
    let new = NewTopic {
        name: name.into(),
        partitions: 1,
        configs: c,
    };
    assert_eq!(f.log.create(vec![new], false).await, vec![Ok(())]);
    let topic = f.log.get(name).expect("topic");
    let part = f.log.partition(&topic, 0).expect("partition");
    for _ in 0..batches {
        let b = encode(5, Compression::None, -1, 0);
        part.append(&f.store, vec![b], true).await.expect("append");
    }
    (topic, part)
}

/// The object at `key`, which must exist.
async fn uploaded(f: &Fixture, key: &object_store::path::Path) -> bytes::Bytes {
    f.s3.get(key)
        .await
        .expect("uploaded")
        .bytes()
        .await
        .expect("bytes")
}

/// Reads everything from `offset` through the tier, waiting for loads.
async fn read_tier(f: &Fixture, offset: u64) -> Vec<bytes::Bytes> {
    let pt = f.tiers.part(f.topic.id, 0).expect("tier state");
    let n = Arc::new(Notify::new());
    for _ in 0..50 {
        pt.register(&n);
        let got = f.tiers.read(&pt, offset, usize::MAX, true, 1);
        if !got.is_empty() {
            return got;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), n.notified()).await;
    }
    panic!("no batches from the tier at {offset}");
}

#[tokio::test]
async fn old_batches_move_to_s3_and_read_back_at_their_offsets() {
    let dir = tempfile::tempdir().expect("dir");
    let f = fixture(dir.path(), Arc::new(InMemory::new())).await;
    let part = f.log.partition(&f.topic, 0).expect("partition");
    let mut produced = Vec::new();
    for _ in 0..20 {
        let b = encode(5, Compression::None, -1, 0);
        part.append(&f.store, vec![b], true).await.expect("append");
    }
    for b in f
        .store
        .log_read(f.topic.id, 0, 0, usize::MAX, 100)
        .expect("read")
    {
        produced.push(b);
    }
    assert_eq!(part.high_watermark(), 100);

    upload::check(&f.tiers, &f.topic, 0, &part)
        .await
        .expect("check");
    let pt = f.tiers.part(f.topic.id, 0).expect("tier state");
    let segs = pt.segments.read().expect("segments").clone();
    assert!(!segs.is_empty(), "something was tiered");
    assert_eq!(segs[0].base, 0);
    for w in segs.windows(2) {
        assert_eq!(w[0].end, w[1].base, "segments are contiguous");
    }
    let end = segs.last().expect("last").end;
    assert_eq!(
        part.log_start(),
        end,
        "the local start moved to the tiered end"
    );
    assert!(
        end < 100,
        "the newest batch stays local (local_bytes 0, one segment short)"
    );
    let key = object_store::path::Path::from(segs[0].key.as_ref());
    assert!(
        segs[0].key.ends_with("/t-1/0/00000000000000000000.log"),
        "{}",
        segs[0].key
    );
    let obj = uploaded(&f, &key).await;
    assert_eq!(obj.len() as u64, segs[0].size);

    // Local copies are deleted one check later; reads below the local start come from S3.
    upload::check(&f.tiers, &f.topic, 0, &part)
        .await
        .expect("check");
    let local = f
        .store
        .log_read(f.topic.id, 0, 0, usize::MAX, 100)
        .expect("read");
    assert!(
        local.iter().all(|(base, _)| *base >= end),
        "deleted locally"
    );
    let mut got = Vec::new();
    let mut at = 0;
    while at < part.log_start() {
        for b in read_tier(&f, at).await {
            let h = BatchHeader::parse(&b).expect("batch");
            at = h.base_offset as u64 + h.offset_count();
            got.push((h.base_offset as u64, b));
        }
    }
    let want: Vec<_> = produced.iter().filter(|(o, _)| *o < at).cloned().collect();
    assert_eq!(got, want, "the tiered batches read back byte for byte");
    // From the middle of a batch: the whole batch holding the offset.
    let mid = read_tier(&f, 7).await;
    assert_eq!(BatchHeader::parse(&mid[0]).expect("batch").base_offset, 5);
}

#[tokio::test]
async fn a_crash_after_the_upload_neither_uploads_again_nor_loses_the_index() {
    let dir = tempfile::tempdir().expect("dir");
    let s3 = Arc::new(InMemory::new());
    let end = {
        let f = fixture(dir.path(), s3.clone()).await;
        let part = f.log.partition(&f.topic, 0).expect("partition");
        for _ in 0..10 {
            let b = encode(5, Compression::None, -1, 0);
            part.append(&f.store, vec![b], true).await.expect("append");
        }
        upload::check(&f.tiers, &f.topic, 0, &part)
            .await
            .expect("check");
        part.log_start()
        // Dropped before the next check: the local copies below `end` stay (a crash
        // between steps 2 and 4).
    };
    assert!(end > 0);
    let f = fixture(dir.path(), s3.clone()).await;
    let part = f.log.partition(&f.topic, 0).expect("partition");
    assert_eq!(
        part.log_start(),
        0,
        "local batches below the tiered end are still there"
    );
    let objects = |s3: &Arc<InMemory>| {
        let s3 = s3.clone();
        async move {
            use futures_util::TryStreamExt;
            s3.list(None)
                .try_collect::<Vec<_>>()
                .await
                .expect("list")
                .len()
        }
    };
    let before = objects(&s3).await;
    upload::check(&f.tiers, &f.topic, 0, &part)
        .await
        .expect("check");
    assert!(part.log_start() >= end);
    let pt = f.tiers.part(f.topic.id, 0).expect("tier state");
    let segs = pt.segments.read().expect("segments").clone();
    for w in segs.windows(2) {
        assert_eq!(w[0].end, w[1].base, "no segment uploaded twice");
    }
    assert!(objects(&s3).await >= before);
    assert!(!read_tier(&f, 0).await.is_empty());
}

#[tokio::test]
async fn local_retention_bytes_minus_one_keeps_everything_local() {
    let dir = tempfile::tempdir().expect("dir");
    let f = fixture(dir.path(), Arc::new(InMemory::new())).await;
    // The test batches' timestamps are old: no retention.ms.
    let cfg = [("retention.ms", "-1"), (LOCAL_BYTES, "-1")];
    let (topic, part) = tiered_topic(&f, "u", &cfg, 20).await;
    upload::check(&f.tiers, &topic, 0, &part)
        .await
        .expect("check");
    assert_eq!(part.log_start(), 0);
    assert!(f.tiers.part(topic.id, 0).and_then(|p| p.start()).is_none());
    // The same data in the fixture's topic (local_bytes 0) does move.
    let t = f.log.partition(&f.topic, 0).expect("partition");
    for _ in 0..20 {
        let b = encode(5, Compression::None, -1, 0);
        t.append(&f.store, vec![b], true).await.expect("append");
    }
    upload::check(&f.tiers, &f.topic, 0, &t)
        .await
        .expect("check");
    assert!(t.log_start() > 0);
}

#[tokio::test]
async fn retention_drops_whole_segments_from_the_front_index_first() {
    use futures_util::TryStreamExt;
    let dir = tempfile::tempdir().expect("dir");
    let s3 = Arc::new(InMemory::new());
    let f = fixture(dir.path(), s3.clone()).await;
    let cfg = [("retention.ms", "-1"), ("retention.bytes", "3000")];
    let (topic, part) = tiered_topic(&f, "r", &cfg, 60).await;
    upload::check(&f.tiers, &topic, 0, &part)
        .await
        .expect("check");
    let pt = f.tiers.part(topic.id, 0).expect("tier state");
    let segs = pt.segments.read().expect("segments").clone();
    assert!(segs.dropped > 0, "some segments expired");
    let start = pt.start().expect("segments left");
    assert!(start > 0, "the partition now starts later");
    let total: u64 = segs.iter().map(|s| s.size).sum();
    assert!(total <= 3000, "what is left fits retention.bytes: {total}");
    // The index and the bucket hold exactly the segments left.
    let stored = f.store.tier_segments(topic.id).expect("index");
    assert_eq!(stored.len(), segs.len());
    assert_eq!(stored[0].1, start);
    let objects: Vec<_> = s3.list(None).try_collect().await.expect("list");
    let mut keys: Vec<String> = objects.iter().map(|o| o.location.to_string()).collect();
    keys.sort();
    let mut want: Vec<String> = segs.iter().map(|s| s.key.to_string()).collect();
    want.sort();
    assert_eq!(keys, want);
    // Reads from the new start still work (cache ids shifted by what was dropped).
    let pt_topic = Fixture {
        store: f.store.clone(),
        log: f.log.clone(),
        tiers: f.tiers.clone(),
        s3: s3.clone(),
        topic: topic.clone(),
    };
    let got = read_tier(&pt_topic, start).await;
    assert_eq!(
        BatchHeader::parse(&got[0]).expect("batch").base_offset as u64,
        start
    );
}

#[tokio::test]
async fn retention_ms_drops_segments_whose_records_are_all_older() {
    use futures_util::TryStreamExt;
    let dir = tempfile::tempdir().expect("dir");
    let s3 = Arc::new(InMemory::new());
    let f = fixture(dir.path(), s3.clone()).await;
    // `encode`'s records are far older than the default retention.ms (7 days).
    let (topic, part) = tiered_topic(&f, "old", &[], 20).await;
    let newest = f
        .store
        .log_last(topic.id, 0)
        .expect("read")
        .expect("a batch")
        .1;
    assert!(BatchHeader::parse(&newest).expect("batch").max_timestamp < 1_000_000_000_000);
    upload::check(&f.tiers, &topic, 0, &part)
        .await
        .expect("check");
    let pt = f.tiers.part(topic.id, 0).expect("tier state");
    assert!(pt.segments.read().expect("segments").dropped > 0);
    assert!(pt.start().is_none(), "every uploaded segment expired");
    assert!(f.store.tier_segments(topic.id).expect("index").is_empty());
    let left: Vec<_> = s3.list(None).try_collect().await.expect("list");
    let other = f
        .tiers
        .part(f.topic.id, 0)
        .map_or(0, |p| p.segments.read().expect("s").len());
    assert_eq!(left.len(), other, "only the other topic's objects remain");
}

#[tokio::test]
async fn a_failed_segment_load_is_retried_by_itself_and_wakes_its_reader() {
    let dir = tempfile::tempdir().expect("dir");
    let f = fixture(dir.path(), Arc::new(InMemory::new())).await;
    let part = f.log.partition(&f.topic, 0).expect("partition");
    for _ in 0..20 {
        let b = encode(5, Compression::None, -1, 0);
        part.append(&f.store, vec![b], true).await.expect("append");
    }
    for _ in 0..2 {
        upload::check(&f.tiers, &f.topic, 0, &part)
            .await
            .expect("check");
    }
    let pt = f.tiers.part(f.topic.id, 0).expect("tier state");
    let key = object_store::path::Path::from(pt.segments.read().expect("segs")[0].key.as_ref());
    let body = uploaded(&f, &key).await;
    f.s3.delete(&key).await.expect("delete");

    // A reader (an MQTT cursor) waits for the partition's wake-up, not on a timer.
    let n = Arc::new(Notify::new());
    pt.register(&n);
    let loads = pt.loads();
    assert!(
        f.tiers.read(&pt, 0, usize::MAX, true, 1).is_empty(),
        "not cached"
    );
    tokio::time::timeout(Duration::from_secs(10), n.notified())
        .await
        .expect("woken when the load failed");
    assert_ne!(pt.loads(), loads, "the failed load counts");

    // Back in S3. Asked for again within the retry delay: the load runs once it passed.
    f.s3.put(&key, body.into()).await.expect("put back");
    pt.register(&n);
    assert!(f.tiers.read(&pt, 0, usize::MAX, true, 1).is_empty());
    tokio::time::timeout(Duration::from_secs(10), n.notified())
        .await
        .expect("woken by the retried load, without another read");
    let got = f.tiers.read(&pt, 0, usize::MAX, true, 1);
    assert_eq!(
        BatchHeader::parse(&got[0]).expect("batch").base_offset,
        0,
        "served once the segment is back"
    );
}
