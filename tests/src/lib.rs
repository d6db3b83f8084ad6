//! Support for the system tests and benchmark programs: a minimal Kafka client on the
//! kafka-protocol crate, and helpers to run the cloud binary and read its resource use.

pub mod kafka;
pub mod proc;
