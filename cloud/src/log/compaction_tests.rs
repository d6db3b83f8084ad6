//! Compaction against a real store: what a pass keeps, removes and leaves alone. The
//! system test with Kafka clients is `tests/python/test_compaction.py`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use common::kafka::batch::{BatchRecord, ProducerState};
use common::kafka::record_batch::{self, Codec};

use super::*;
use crate::log::partition::PartitionLog;
use crate::log::NewTopic;
use crate::storage::{Store, SyncPolicy};

const T0: i64 = 1_700_000_000_000;
/// "Now" for the passes: a day after the records.
const NOW: i64 = T0 + 86_400_000;

struct Fx {
    _dir: tempfile::TempDir,
    log: Arc<Log>,
    topic: Arc<Topic>,
    part: Arc<PartitionLog>,
}

async fn fixture(configs: &[(&str, &str)]) -> Fx {
    let dir = tempfile::tempdir().expect("dir");
    let store = Arc::new(Store::open(&dir.path().join("s"), SyncPolicy::Group).expect("store"));
    let log = Arc::new(Log::open(store).expect("log"));
    let mut c = BTreeMap::new();
    c.insert("cleanup.policy".to_string(), "compact".to_string());
    for (k, v) in configs {
        c.insert(k.to_string(), v.to_string());
    }
    let new = NewTopic {
        name: "c".into(),
        partitions: 1,
        configs: c,
    };
    assert_eq!(log.create(vec![new], false).await, vec![Ok(())]);
    let topic = log.get("c").expect("topic");
    let part = log.partition(&topic, 0).expect("partition");
    Fx {
        _dir: dir,
        log,
        topic,
        part,
    }
}

/// One record: key, value (`None`: a tombstone), timestamp offset from [`T0`].
type Rec<'a> = (Option<&'a str>, Option<&'a str>, i64);

async fn append(fx: &Fx, recs: &[Rec<'_>], codec: Codec) -> u64 {
    let batch: Vec<BatchRecord> = recs
        .iter()
        .map(|(k, v, t)| BatchRecord {
            key: k.map(|k| Bytes::from(k.to_string())),
            value: v.map(|v| Bytes::from(v.to_string())),
            headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
            timestamp_ms: T0 + t,
        })
        .collect();
    let b = record_batch::write(&batch, ProducerState::NONE, -1, codec).expect("write");
    fx.part
        .append(&fx.log.store, vec![b], true)
        .await
        .expect("append")
        .base_offset
}

/// Every stored record: (offset, key, value).
fn stored(fx: &Fx) -> Vec<(i64, Option<String>, Option<String>)> {
    let s = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).expect("utf8"));
    fx.log
        .store
        .log_read(fx.topic.id, 0, 0, usize::MAX, 100_000)
        .expect("read")
        .iter()
        .flat_map(|(_, b)| batch::records(b).expect("records"))
        .map(|r| (r.offset, s(r.key), s(r.value)))
        .collect()
}

fn batches(fx: &Fx) -> Vec<(u64, Bytes)> {
    fx.log
        .store
        .log_read(fx.topic.id, 0, 0, usize::MAX, 100_000)
        .expect("read")
}

async fn pass(fx: &Fx, c: &mut Compactor, now: i64) -> Pass {
    let log = fx.log.clone();
    let rt = tokio::runtime::Handle::current();
    let mut moved = std::mem::take(c);
    let (back, pass) = tokio::task::spawn_blocking(move || {
        let p = moved.sweep(&log, &rt, now).expect("sweep");
        (moved, p)
    })
    .await
    .expect("join");
    *c = back;
    pass
}

#[tokio::test]
async fn keeps_the_newest_record_of_every_key_at_its_offset() {
    let fx = fixture(&[]).await;
    let mut want: HashMap<String, (i64, String)> = HashMap::new();
    for b in 0..10i64 {
        let recs: Vec<(String, String)> = (0..10i64)
            .map(|i| (format!("k{}", (b * 10 + i) % 7), format!("v{}", b * 10 + i)))
            .collect();
        let r: Vec<Rec> = recs
            .iter()
            .map(|(k, v)| (Some(k.as_str()), Some(v.as_str()), b))
            .collect();
        let codec = [Codec::None, Codec::Zstd, Codec::Gzip, Codec::Lz4][b as usize % 4];
        let base = append(&fx, &r, codec).await as i64;
        for (i, (k, v)) in recs.into_iter().enumerate() {
            want.insert(k, (base + i as i64, v));
        }
    }
    // The last batch is never cleaned: it keeps a superseded record.
    let last = append(
        &fx,
        &[
            (Some("k0"), Some("old-in-head"), 20),
            (Some("k0"), Some("head"), 20),
        ],
        Codec::None,
    )
    .await;
    let head_before = batches(&fx).last().cloned().expect("head");
    let before = batches(&fx).len();

    let mut c = Compactor::default();
    let p = pass(&fx, &mut c, NOW).await;
    assert_eq!(p.partitions, 1);
    assert_eq!(
        p.records_removed,
        100 - 7,
        "7 keys left of 100 records: {p:?}"
    );

    let mut expect: Vec<(i64, Option<String>, Option<String>)> = want
        .into_iter()
        .map(|(k, (o, v))| (o, Some(k), Some(v)))
        .collect();
    expect.sort();
    expect.push((last as i64, Some("k0".into()), Some("old-in-head".into())));
    expect.push((last as i64 + 1, Some("k0".into()), Some("head".into())));
    assert_eq!(
        stored(&fx),
        expect,
        "the newest of each key, at its offset, and the head"
    );
    let after = batches(&fx);
    assert!(after.len() < before, "emptied batches deleted");
    assert_eq!(after.last(), Some(&head_before), "the head is untouched");
    for (base, b) in &after[..after.len() - 1] {
        let h = BatchHeader::parse(b).expect("header");
        assert_eq!(h.base_offset as u64, *base);
        assert_eq!(
            h.offset_count(),
            10,
            "batch at {base} still spans its offsets"
        );
        batch::verify_crc(b).expect("crc");
    }
    // The partition still ends where it did.
    assert_eq!(fx.part.high_watermark(), last + 2);
}

#[tokio::test]
async fn tombstones_are_kept_until_delete_retention_ms() {
    let fx = fixture(&[
        ("delete.retention.ms", "1000"),
        ("min.cleanable.dirty.ratio", "0.1"),
    ])
    .await;
    append(
        &fx,
        &[(Some("a"), Some("1"), 0), (Some("b"), Some("1"), 0)],
        Codec::None,
    )
    .await;
    let t = append(&fx, &[(Some("a"), None, 0)], Codec::None).await;
    append(&fx, &[(Some("z"), Some("head"), 0)], Codec::None).await;
    let mut c = Compactor::default();
    // Within delete.retention.ms of the tombstone: a's value goes, the tombstone stays.
    pass(&fx, &mut c, T0 + 500).await;
    assert_eq!(
        stored(&fx),
        vec![
            (1, Some("b".into()), Some("1".into())),
            (t as i64, Some("a".into()), None),
            (t as i64 + 1, Some("z".into()), Some("head".into())),
        ]
    );
    // Later, once new records make the partition dirty again: the tombstone goes too.
    append(&fx, &[(Some("z"), Some("head2"), 0)], Codec::None).await;
    pass(&fx, &mut c, T0 + 5_000).await;
    let keys: Vec<_> = stored(&fx).into_iter().map(|(_, k, _)| k).collect();
    assert_eq!(
        keys,
        vec![Some("b".into()), Some("z".into()), Some("z".into())],
        "a is gone; z's older record stays until the head that supersedes it is cleaned"
    );
}

#[tokio::test]
async fn a_pass_waits_for_the_dirty_ratio_and_the_compaction_lag() {
    let fx = fixture(&[
        ("min.compaction.lag.ms", "3600000"),
        ("min.cleanable.dirty.ratio", "0.6"),
    ])
    .await;
    for i in 0..5 {
        append(&fx, &[(Some("k"), Some("v"), i)], Codec::None).await;
    }
    let mut c = Compactor::default();
    let p = pass(&fx, &mut c, T0 + 60_000).await;
    assert_eq!(
        p,
        Pass::default(),
        "records younger than the lag are not compacted"
    );
    let p = pass(&fx, &mut c, T0 + 7_200_000).await;
    assert_eq!(
        p.records_removed, 3,
        "all but the newest below the head: {p:?}"
    );
    // One more batch: the dirty one is half of what lies below the head, under 0.6.
    append(&fx, &[(Some("k"), Some("v"), 5)], Codec::None).await;
    let p = pass(&fx, &mut c, T0 + 7_200_000).await;
    assert_eq!(p, Pass::default(), "not dirty enough");
}

#[tokio::test]
async fn records_without_a_key_and_other_topics_are_left_alone() {
    let fx = fixture(&[]).await;
    append(
        &fx,
        &[(None, Some("n1"), 0), (Some("k"), Some("1"), 0)],
        Codec::Zstd,
    )
    .await;
    append(
        &fx,
        &[(None, Some("n2"), 0), (Some("k"), Some("2"), 0)],
        Codec::Zstd,
    )
    .await;
    append(&fx, &[(Some("h"), Some("head"), 0)], Codec::None).await;
    let plain = NewTopic {
        name: "plain".into(),
        partitions: 1,
        configs: BTreeMap::new(),
    };
    assert_eq!(fx.log.create(vec![plain], false).await, vec![Ok(())]);
    let t = fx.log.get("plain").expect("topic");
    let pp = fx.log.partition(&t, 0).expect("partition");
    for _ in 0..3 {
        let b = record_batch::write(
            &[BatchRecord {
                key: Some(Bytes::from_static(b"k")),
                value: Some(Bytes::from_static(b"v")),
                headers: vec![],
                timestamp_ms: T0,
            }],
            ProducerState::NONE,
            -1,
            Codec::None,
        )
        .expect("write");
        pp.append(&fx.log.store, vec![b], true)
            .await
            .expect("append");
    }
    let mut c = Compactor::default();
    let p = pass(&fx, &mut c, NOW).await;
    assert_eq!(p.records_removed, 1);
    let vals: Vec<_> = stored(&fx)
        .into_iter()
        .map(|(_, _, v)| v.expect("value"))
        .collect();
    assert_eq!(vals, ["n1", "n2", "2", "head"]);
    let plain_left = fx
        .log
        .store
        .log_read(t.id, 0, 0, usize::MAX, 100)
        .expect("read")
        .len();
    assert_eq!(
        plain_left, 3,
        "cleanup.policy=delete topics are not compacted"
    );
}

#[tokio::test]
async fn a_rewrite_never_brings_back_a_batch_delete_records_removed() {
    let fx = fixture(&[]).await;
    for v in ["1", "2", "3"] {
        append(
            &fx,
            &[(Some("a"), Some(v), 0), (Some("b"), Some(v), 0)],
            Codec::None,
        )
        .await;
    }
    let (base, first) = batches(&fx)[0].clone();
    // DeleteRecords past the first batch, as if it ran while a pass held a rewrite of it.
    assert_eq!(
        fx.part
            .delete_records(&fx.log.store, 2)
            .await
            .expect("delete"),
        2
    );
    let (log, topic) = (fx.log.clone(), fx.topic.clone());
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        super::write(&log, &rt, &topic, 0, vec![(base, 2, Some(first))])
    })
    .await
    .expect("join")
    .expect("write");
    let bases: Vec<u64> = batches(&fx).iter().map(|(b, _)| *b).collect();
    assert_eq!(bases, vec![2, 4], "the deleted batch stays deleted");
}
