//! Code shared by the edge and the cloud: the MQTT <-> Kafka topic mapping, the record
//! header contract and a small async Kafka client.

pub mod headers;
pub mod kafka;
pub mod topic;
