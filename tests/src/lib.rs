//! Support for the system tests and benchmark programs: a minimal Kafka client on the
//! kafka-protocol crate, and helpers to run the cloud and edge binaries and read their resource use.

pub mod edge;
pub mod kafka;
pub mod mqtt;
pub mod proc;
