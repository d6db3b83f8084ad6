//! The edge appliance: MQTT in (embedded rumqttd), a durable sled buffer, and an
//! exactly-once store-and-forward replicator to the cloud over the Kafka protocol.
//!
//! Data path: device --MQTT--> [`ingest`] (codec wrapper) --> [`buffer`] (sled, group
//! commit) --> [`replicator`] --Kafka Produce--> cloud; and, optionally, cloud --MQTT-->
//! [`downlink`] --> the embedded broker's local subscribers.

pub mod backoff;
pub mod buffer;
pub mod client_packets;
pub mod config;
pub mod downlink;
pub mod filter;
pub mod ingest;
pub mod logfilter;
pub mod metrics;
pub mod mqtt;
pub mod qos2;
pub mod replicator;
pub mod takeover;
