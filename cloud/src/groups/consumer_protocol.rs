//! The consumer protocol's embedded messages (the bytes inside JoinGroup's member
//! metadata and SyncGroup's assignments), as a shared group reads and writes them. Depends
//! only on `bytes` and `kafka-protocol`, so the fuzz target includes it by path.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::{
    ConsumerProtocolAssignment, TopicPartition,
};
use kafka_protocol::messages::{ConsumerProtocolSubscription, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// The topics a member subscribed to, from its JoinGroup metadata (the consumer protocol's
/// subscription, any version); none if it does not decode.
pub(crate) fn subscribed_topics(metadata: &[u8]) -> Vec<String> {
    if metadata.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([metadata[0], metadata[1]]).clamp(0, 3);
    let mut buf = Bytes::copy_from_slice(&metadata[2..]);
    ConsumerProtocolSubscription::decode(&mut buf, version)
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

/// A consumer protocol assignment (version 0, which every client reads) of `partitions`
/// of each topic.
pub(crate) fn assignment(topics: &[(String, u32)]) -> Bytes {
    let mut a = ConsumerProtocolAssignment::default();
    a.user_data = Some(Bytes::new());
    a.assigned_partitions = topics
        .iter()
        .map(|(t, n)| {
            let mut tp = TopicPartition::default();
            tp.topic = TopicName(StrBytes::from_string(t.clone()));
            tp.partitions = (0..*n as i32).collect();
            tp
        })
        .collect();
    let mut out = BytesMut::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    // Encoding a default-built message at version 0 cannot fail.
    if a.encode(&mut out, 0).is_err() {
        return Bytes::new();
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as Owned;

    #[test]
    fn subscriptions_of_every_version_name_their_topics() {
        for version in 0..=3i16 {
            let mut s = ConsumerProtocolSubscription::default();
            s.topics = vec![
                StrBytes::from_static_str("a"),
                StrBytes::from_static_str("b"),
            ];
            if version >= 1 {
                let mut o = Owned::default();
                o.topic = TopicName(StrBytes::from_static_str("a"));
                o.partitions = vec![0];
                s.owned_partitions = vec![o];
            }
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&version.to_be_bytes());
            s.encode(&mut buf, version).unwrap();
            assert_eq!(subscribed_topics(&buf), vec!["a", "b"], "version {version}");
        }
        // A newer version than known is read as the newest known (Kafka's rule).
        assert!(subscribed_topics(&[0, 9, 0, 0]).is_empty());
        assert!(subscribed_topics(&[0]).is_empty());
        assert!(subscribed_topics(&[0, 0, 0xff, 0xff, 0xff, 0x7f]).is_empty());
    }

    #[test]
    fn an_assignment_gives_every_partition() {
        let mut b = assignment(&[("a".into(), 3), ("b".into(), 1)]);
        assert_eq!(&b[..2], &[0, 0]);
        let mut body = b.split_off(2);
        let a = ConsumerProtocolAssignment::decode(&mut body, 0).unwrap();
        let got: Vec<(String, Vec<i32>)> = a
            .assigned_partitions
            .iter()
            .map(|t| (t.topic.0.to_string(), t.partitions.clone()))
            .collect();
        assert_eq!(
            got,
            vec![("a".into(), vec![0, 1, 2]), ("b".into(), vec![0])]
        );
    }
}
