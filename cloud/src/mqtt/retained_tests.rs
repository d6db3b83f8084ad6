//! Retained messages published together (one batch from one client, or one Kafka
//! Produce): per topic the last one is the retained state afterwards, an empty payload
//! clears, and the store holds the same state as the hub.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;

use super::hub::Hub;
use super::persist;
use super::records::Message;
use super::MqttConfig;
use crate::log::Log;
use crate::storage::{Store, SyncPolicy};

fn msg(topic: &str, payload: &'static [u8], retain: bool) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain,
        props: None,
        timestamp_ms: 0,
    })
}

#[tokio::test]
async fn the_last_retained_message_of_a_batch_wins_and_an_empty_one_clears() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Arc::new(Store::open(dir.path(), SyncPolicy::Group).expect("store"));
    let log = Arc::new(Log::open(store.clone()).expect("log"));
    let hub = Hub::open(log, None, MqttConfig::default())
        .await
        .expect("hub");
    let key = Bytes::from_static(b"pub");
    let mut ok = Vec::new();
    // c/t holds a retained message from an earlier publish; the batch clears it.
    hub.append(msg("c/t", b"c0", true), &key)
        .await
        .expect("append");
    let batch = [
        msg("a/t", b"a1", true),
        msg("b/t", b"b1", true),
        msg("a/t", b"a2", true),
        msg("c/t", b"", true),
        msg("a/t", b"a3 not retained", false),
        msg("b/t", b"b2", true),
    ];
    hub.append_many(&batch, &key, &mut ok).await;
    assert_eq!(ok, vec![true; batch.len()]);
    // The same for one topic alone (the path without grouping by topic).
    let one = [msg("d/t", b"d1", true), msg("d/t", b"d2", true)];
    hub.append_many(&one, &key, &mut ok).await;
    assert_eq!(ok, vec![true; one.len()]);

    let want: BTreeMap<String, Bytes> = [("a/t", "a2"), ("b/t", "b2"), ("d/t", "d2")]
        .into_iter()
        .map(|(t, p)| (t.to_string(), Bytes::from(p)))
        .collect();
    let in_hub: BTreeMap<String, Bytes> = hub
        .retained_matching("#")
        .into_iter()
        .map(|m| (m.topic.clone(), m.payload.clone()))
        .collect();
    assert_eq!(in_hub, want);
    let stored: BTreeMap<String, Bytes> = store
        .retained()
        .expect("retained")
        .into_iter()
        .map(|(t, v)| (t, persist::decode_retained(&v).expect("decode").payload))
        .collect();
    assert_eq!(stored, want);
}
