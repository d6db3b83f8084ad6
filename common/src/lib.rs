//! Code shared by the edge and the cloud: the MQTT <-> Kafka topic mapping, the record
//! header contract, a small async Kafka client and TLS configuration (rustls).

pub mod headers;
pub mod kafka;
pub mod metrics_http;
pub mod net;
pub mod secret;
pub mod tls;
pub mod topic;
