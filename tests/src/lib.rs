//! Support for the system tests and benchmark programs: a minimal Kafka client on the
//! kafka-protocol crate, helpers to run the cloud and edge binaries and read their resource
//! use, and a TCP fault proxy for chaos tests.

pub mod faultproxy;
pub mod kafka;
pub mod mqtt;
pub mod proc;
pub mod usage;
