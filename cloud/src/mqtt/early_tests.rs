//! Early delivery (`mqtt.deliver_before_sync`, `recent` module docs): with the store's
//! writer held (an fsync that has not finished), a QoS 1 message reaches a subscriber's
//! cursor while its publisher still waits, a QoS 2 message does not, the Kafka view and
//! the stored positions stay at the high watermark; with the option off nothing goes
//! out before the fsync.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, PubAck, PubAckReason, RetainForwardRule, Subscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::Notify;

use super::codec::Version;
use super::cursor::{Cursors, Start};
use super::hub::Event;
use super::hub::Hub;
use super::inbox::inbox;
use super::recent::Recent;
use super::records::Message;
use super::session::{Limits, Session};
use super::share::ShareGroup;
use super::stored::Stored;
use super::MqttConfig;
use crate::log::partition::PartitionLog;
use crate::log::Log;
use crate::storage::{Store, SyncPolicy};

const TOPIC: &str = "early/t";

fn msg(payload: &'static [u8], qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: TOPIC.into(),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        props: None,
        timestamp_ms: 0,
    })
}

/// A hub on a fresh store, the topic's partition (created by a first publish) and a
/// QoS 2 subscriber's session with a cursor at its end.
async fn setup(
    dir: &std::path::Path,
    early: bool,
) -> (Arc<Hub>, Arc<PartitionLog>, Session, Cursors) {
    let store = Arc::new(Store::open(dir, SyncPolicy::Group).expect("store"));
    let log = Arc::new(Log::open(store).expect("log"));
    let config = MqttConfig {
        deliver_before_sync: early,
        ..MqttConfig::default()
    };
    let hub = Hub::open(log, None, config).await.expect("hub");
    let key = Bytes::from_static(b"pub");
    hub.append(msg(b"first", QoS::AtLeastOnce), &key)
        .await
        .expect("append");
    let name = common::topic::mqtt_to_kafka(TOPIC).expect("name");
    let (_, part) = hub.partitions(&name).pop().expect("partition");
    let limits = Limits {
        receive_maximum: 16,
        topic_alias_max: 0,
    };
    let mut session = Session::new("sub".into(), Version::V5, 0, limits);
    session.incoming(Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![Filter {
            path: TOPIC.into(),
            qos: QoS::ExactlyOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        }],
        properties: None,
    }));
    let mut cursors = Cursors::default();
    cursors.open(name.into(), None, 0, part.clone(), Start::End);
    (hub, part, session, cursors)
}

/// Publishes `m` in a task (it finishes once its append is durable).
fn publish(hub: &Arc<Hub>, m: Arc<Message>) -> tokio::task::JoinHandle<()> {
    let hub = hub.clone();
    tokio::spawn(async move {
        hub.append(m, &Bytes::from_static(b"pub"))
            .await
            .expect("append")
    })
}

/// Waits (woken by the partition, as a connection is) until the cursors have something
/// to deliver, or `within` passes; returns whether they do.
async fn ready_within(cursors: &Cursors, session: &Session, within: Duration) -> bool {
    let n = Arc::new(Notify::new());
    let deadline = tokio::time::Instant::now() + within;
    loop {
        cursors.register(&n);
        if cursors.ready(session) {
            return true;
        }
        if tokio::time::timeout_at(deadline, n.notified())
            .await
            .is_err()
        {
            return cursors.ready(session);
        }
    }
}

fn untiered(store: &Store) -> Stored<'_> {
    Stored {
        store,
        tiers: None,
        reader: 1,
    }
}

/// What the cursors deliver now, encoded.
fn pump(cursors: &mut Cursors, store: &Store, session: &mut Session) -> BytesMut {
    let mut out = BytesMut::new();
    cursors
        .pump(untiered(store), session, Version::V5, &mut out)
        .expect("pump");
    out
}

fn sent(out: &BytesMut, payload: &[u8]) -> bool {
    out.windows(payload.len()).any(|w| w == payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_message_is_delivered_before_its_fsync_and_a_qos2_one_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, part, mut session, mut cursors) = setup(dir.path(), true).await;
    let store = hub.log.store.clone();
    let durable = part.high_watermark();
    let hold = store.hold_writer();
    let early = publish(&hub, msg(b"early-one", QoS::AtLeastOnce));
    assert!(
        ready_within(&cursors, &session, Duration::from_secs(10)).await,
        "the subscriber was not woken before the fsync"
    );
    let out = pump(&mut cursors, &store, &mut session);
    assert!(sent(&out, b"early-one"), "delivered before the fsync");
    assert!(
        !early.is_finished(),
        "the publisher still waits for the fsync"
    );
    assert_eq!(part.high_watermark(), durable, "the Kafka view waits");
    assert!(part
        .read(&store, durable, 1 << 20)
        .expect("read")
        .batches
        .is_empty());
    // The subscriber acknowledges it; what a session would store stays at what is
    // durable all the same.
    session.incoming(Packet::PubAck(PubAck {
        pkid: 1,
        reason: PubAckReason::Success,
        properties: None,
    }));
    assert_eq!(session.tickets_in_flight().count(), 0, "acknowledged");
    assert_eq!(cursors.list[0].next, durable + 1);
    assert_eq!(cursors.committed(&session)[0].2, durable);
    assert_eq!(cursors.saved(&session).cursors[0].2, durable);

    // QoS 2 waits for the fsync, and so does what follows it. The second publish is
    // started once the first has its offset: two tasks started together could append
    // in either order (a CI run once appended the QoS 1 one first, which then rightly
    // went out early).
    let exact = publish(&hub, msg(b"exactly-once", QoS::ExactlyOnce));
    let recent = Recent::existing(&part).expect("the cursor watches the partition");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recent.end() < durable + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the QoS 2 append never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let after = publish(&hub, msg(b"behind-it", QoS::AtLeastOnce));
    assert!(
        !ready_within(&cursors, &session, Duration::from_millis(300)).await,
        "a QoS 2 message went out before its fsync"
    );
    drop(hold);
    for t in [early, exact, after] {
        t.await.expect("publisher");
    }
    assert!(ready_within(&cursors, &session, Duration::from_secs(10)).await);
    let out = pump(&mut cursors, &store, &mut session);
    assert!(sent(&out, b"exactly-once") && sent(&out, b"behind-it"));
    assert_eq!(part.high_watermark(), durable + 3);
    assert_eq!(
        cursors.committed(&session)[0].2,
        durable + 1,
        "the QoS 2 delivery is in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_early_delivery_off_a_subscriber_waits_for_the_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, part, mut session, mut cursors) = setup(dir.path(), false).await;
    let store = hub.log.store.clone();
    let hold = store.hold_writer();
    let t = publish(&hub, msg(b"after-fsync", QoS::AtLeastOnce));
    assert!(
        !ready_within(&cursors, &session, Duration::from_millis(300)).await,
        "delivered before the fsync with deliver_before_sync off"
    );
    drop(hold);
    t.await.expect("publisher");
    assert!(ready_within(&cursors, &session, Duration::from_secs(10)).await);
    let out = pump(&mut cursors, &store, &mut session);
    assert!(sent(&out, b"after-fsync"));
    assert_eq!(part.high_watermark(), 2);
}

/// A share group's dispatcher hands a QoS 1 message to a member before its fsync; the
/// group's stored position stays at what is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_group_hands_out_a_qos1_message_before_its_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, part, _, _) = setup(dir.path(), true).await;
    let store = hub.log.store.clone();
    let durable = part.high_watermark();
    let name = common::topic::mqtt_to_kafka(TOPIC).expect("name");
    let group = ShareGroup::new("$share/g/early/t", TOPIC);
    group.open(name.into(), None, 0, part.clone(), Start::End);
    let (tx, mut rx) = inbox();
    group.join(1, tx, 16);
    let hold = store.hold_writer();
    let early = publish(&hub, msg(b"to-a-member", QoS::AtLeastOnce));
    let n = Arc::new(Notify::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let d = loop {
        part.register(&n);
        group.dispatch(untiered(&store));
        if let Ok(Some(Event::Shared(_, d))) =
            tokio::time::timeout(Duration::from_millis(1), rx.recv()).await
        {
            break d;
        }
        assert!(
            tokio::time::timeout_at(deadline, n.notified())
                .await
                .is_ok(),
            "the group was not woken before the fsync"
        );
    };
    assert_eq!(&d.message.payload[..], b"to-a-member");
    assert!(
        !early.is_finished(),
        "the publisher still waits for the fsync"
    );
    group.done(1, d.cursor, d.offset, false);
    assert_eq!(
        group.committed()[0].2,
        durable,
        "stored position stays at the durable end"
    );
    drop(hold);
    early.await.expect("publisher");
    assert_eq!(group.committed()[0].2, durable + 1);
}
