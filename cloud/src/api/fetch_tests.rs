use std::collections::BTreeMap;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;

use super::*;
use crate::api::sasl::Sasl;
use crate::broker::Node;
use crate::config::Config;
use crate::groups::Coordinator;
use crate::log::batch::tests::encode;
use crate::log::{Log, NewTopic};
use crate::storage::{Store, SyncPolicy};

const G: &str = "$shared/g";

async fn broker(dir: &std::path::Path) -> Arc<Broker> {
    let store = Arc::new(Store::open(dir, SyncPolicy::Group).expect("store"));
    let log = Arc::new(Log::open(store.clone()).expect("log"));
    let bounds = (Duration::from_millis(1), Duration::from_secs(3600));
    let groups = Arc::new(Coordinator::new(store.clone(), Duration::ZERO, bounds));
    let node = Node {
        host: "127.0.0.1".into(),
        port: 9092,
    };
    let sources = crate::source::Sources::new(store.clone(), Default::default(), dir)
        .map(Arc::new)
        .expect("sources");
    let tiers = Arc::new(crate::tier::Tiers::new(
        Default::default(),
        sources.clone(),
        store.clone(),
    ));
    let b = Broker::new(store, log, groups, Config::default(), node, sources, tiers)
        .await
        .expect("broker");
    let t = NewTopic {
        name: "t".into(),
        partitions: 1,
        configs: BTreeMap::new(),
    };
    b.log
        .create(vec![t], false)
        .await
        .pop()
        .expect("one")
        .expect("created");
    Arc::new(b)
}

fn request(offset: i64) -> FetchRequest {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_static_str("t"));
    t.partitions = vec![p];
    let mut r = FetchRequest::default();
    r.max_wait_ms = 30_000;
    r.min_bytes = 1;
    r.max_bytes = 50 << 20;
    r.topics = vec![t];
    r
}

/// A long-polling fetch by connection `conn` of member `a` of the shared group.
fn fetch(b: &Arc<Broker>, conn: u64, offset: i64) -> tokio::task::JoinHandle<Body> {
    let b = b.clone();
    tokio::spawn(async move {
        let peer = Peer {
            id: conn,
            host: "127.0.0.1".into(),
            sasl: Sasl::new(false),
            identity: None,
            grants: None,
        };
        let all = crate::acl::Grants::all();
        handle(&b, request(offset), 12, "a", &peer, &all).await
    })
}

/// Two members' fetches stay open while records are appended one at a time. Each
/// round the member served last is the one an append wakes first (its fetch registered
/// first: the other's is restarted after it); still each append goes to the member not
/// served last, because a shared slot stays parked for the whole fetch and the member
/// served last yields to a parked one.
#[tokio::test(flavor = "current_thread")]
async fn shared_members_waiting_together_take_turns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker(dir.path()).await;
    let tag = Tag {
        client_id: "a".into(),
        host: "127.0.0.1".into(),
    };
    b.groups
        .shares
        .observe(G, 1, true, || vec![(tag, vec!["t".into()])]);
    let part = b
        .log
        .partition(&b.log.get("t").expect("topic"), 0)
        .expect("p");
    let parked = |n: usize| {
        let b = b.clone();
        async move {
            while b.groups.shares.parked(G, "t", 0) != n {
                tokio::task::yield_now().await;
            }
        }
    };
    let mut offsets = [0i64; 2];
    let mut open = [Some(fetch(&b, 1, 0)), None];
    parked(1).await;
    open[1] = Some(fetch(&b, 2, 0));
    let mut served = Vec::new();
    for round in 0..10u64 {
        parked(2).await;
        let batch = encode(1, Compression::None, -1, 0);
        part.append(&b.log.store, vec![batch], false)
            .await
            .expect("append");
        let done = loop {
            if let Some(i) = open
                .iter()
                .position(|h| h.as_ref().is_some_and(|h| h.is_finished()))
            {
                break i;
            }
            tokio::task::yield_now().await;
        };
        let body = open[done].take().expect("open").await.expect("join");
        let batches = &body.topics[0].partitions[0].batches;
        assert_eq!(batches.len(), 1, "round {round}: the new batch");
        served.push(done + 1);
        offsets[done] = round as i64 + 1;
        // The member just served fetches again first; the other's fetch is restarted
        // after it, so the next append wakes the member served last first.
        open[done] = Some(fetch(&b, done as u64 + 1, offsets[done]));
        parked(2).await;
        let other = 1 - done;
        let h = open[other].take().expect("open");
        h.abort();
        assert!(h.await.is_err(), "the other fetch was still open");
        parked(1).await;
        open[other] = Some(fetch(&b, other as u64 + 1, offsets[other]));
    }
    for w in served.windows(2) {
        assert_ne!(w[0], w[1], "the same member twice in a row: {served:?}");
    }
    for h in open.into_iter().flatten() {
        h.abort();
    }
}
