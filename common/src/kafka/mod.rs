//! A small async Kafka client on the `kafka-protocol` crate: connect (TCP, TLS and
//! SASL/PLAIN as configured: [`connector`]) + ApiVersions negotiation, Metadata,
//! InitProducerId and pipelined Produce (several requests in flight per connection,
//! matched by correlation id). Used by the edge's replicator and the benchmarks.
//! Layers: [`batch`] and [`produce`] (bytes only, no I/O) -> [`conn`] (socket, framing) -> [`client`]
//! and [`sasl`] (typed request helpers) -> [`connector`] (opens authenticated connections).

pub mod batch;
pub mod client;
pub mod conn;
pub mod connector;
pub mod frame;
pub mod produce;
pub mod record_batch;
pub mod sasl;
pub mod scram;

pub use batch::{encode_batch, restamp, BatchRecord, ProducerState};
pub use client::{Metadata, PartitionMeta, ProducePartition};
pub use conn::{Connection, ResponseFuture};
pub use connector::Connector;
pub use sasl::{Credentials, Mechanism};

use kafka_protocol::messages::ApiKey;

/// Errors of the Kafka client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket-level failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The connection is gone; pending requests fail with this.
    #[error("connection closed: {0}")]
    Closed(String),
    /// A request could not be encoded.
    #[error("encode: {0}")]
    Encode(String),
    /// A response could not be decoded.
    #[error("decode: {0}")]
    Decode(String),
    /// The broker does not support an API version we can speak.
    #[error("broker does not support {0:?}")]
    Unsupported(ApiKey),
    /// The TLS handshake failed or the server closed the connection during it.
    #[error("tls: {0}")]
    Tls(String),
    /// SASL authentication failed.
    #[error("sasl authentication failed {0}")]
    Auth(String),
    /// The broker answered with an error code.
    #[error("{api} failed with kafka error code {code}")]
    Broker {
        /// Which API.
        api: &'static str,
        /// Kafka error code.
        code: i16,
    },
}

impl Error {
    pub(crate) fn encode(e: impl std::fmt::Display) -> Self {
        Error::Encode(e.to_string())
    }
    pub(crate) fn decode(e: impl std::fmt::Display) -> Self {
        Error::Decode(e.to_string())
    }
}

/// Kafka error codes the client reacts to.
pub mod codes {
    /// An error the broker did not classify.
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    /// No error.
    pub const NONE: i16 = 0;
    /// The topic or partition does not exist (yet).
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// Leader not available (e.g. topic being created).
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    /// This broker is not the partition's leader.
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    /// Request timed out.
    pub const REQUEST_TIMED_OUT: i16 = 7;
    /// A batch is larger than the topic's `max.message.bytes`.
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    /// The client may not use the topic.
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    /// The topic exists already (CreateTopics).
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    /// Out-of-order sequence number (idempotent producer).
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    /// Duplicate sequence number: the batch is already in the log.
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    /// Producer epoch is stale.
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    /// The broker does not know the producer id.
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
}
