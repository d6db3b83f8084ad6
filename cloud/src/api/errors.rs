//! Kafka error codes used by this broker, and the mapping from lower layers' errors.

use crate::log::partition::AppendError;
use crate::log::TopicError;

pub(crate) const NONE: i16 = 0;
pub(crate) const OFFSET_OUT_OF_RANGE: i16 = 1;
pub(crate) const CORRUPT_MESSAGE: i16 = 2;
pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub(crate) const INVALID_REQUIRED_ACKS: i16 = 21;
pub(crate) const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
pub(crate) const GROUP_AUTHORIZATION_FAILED: i16 = 30;
/// The message of a TOPIC_AUTHORIZATION_FAILED answer.
pub(crate) const NOT_ALLOWED: &str = "not allowed by the broker's acl";
pub(crate) const UNKNOWN_SERVER_ERROR: i16 = -1;
pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub(crate) const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub(crate) const UNSUPPORTED_VERSION: i16 = 35;
pub(crate) const TOPIC_ALREADY_EXISTS: i16 = 36;
pub(crate) const INVALID_PARTITIONS: i16 = 37;
pub(crate) const INVALID_REPLICATION_FACTOR: i16 = 38;
pub(crate) const INVALID_REQUEST: i16 = 42;
pub(crate) const INVALID_CONFIG: i16 = 40;
pub(crate) const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub(crate) const INVALID_PRODUCER_EPOCH: i16 = 47;
pub(crate) const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
pub(crate) const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
pub(crate) const ILLEGAL_SASL_STATE: i16 = 34;
pub(crate) const SASL_AUTHENTICATION_FAILED: i16 = 58;
pub(crate) const KAFKA_STORAGE_ERROR: i16 = 56;
pub(crate) const INVALID_RECORD: i16 = 87;
pub(crate) const POLICY_VIOLATION: i16 = 44;
pub(crate) const UNKNOWN_TOPIC_ID: i16 = 100;

pub(crate) fn topic_error(e: &TopicError) -> i16 {
    match e {
        TopicError::Exists => TOPIC_ALREADY_EXISTS,
        TopicError::Unknown => UNKNOWN_TOPIC_OR_PARTITION,
        TopicError::InvalidName(_) | TopicError::ReadOnly => INVALID_TOPIC_EXCEPTION,
        TopicError::InvalidPartitions(_) => INVALID_PARTITIONS,
        TopicError::InvalidConfig { .. } => INVALID_CONFIG,
        TopicError::Storage(_) => KAFKA_STORAGE_ERROR,
    }
}

pub(crate) fn append_error(e: &AppendError) -> i16 {
    match e {
        AppendError::Corrupt(_) => CORRUPT_MESSAGE,
        AppendError::OutOfOrderSequence => OUT_OF_ORDER_SEQUENCE_NUMBER,
        AppendError::StaleEpoch => INVALID_PRODUCER_EPOCH,
        AppendError::Transactional => TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        AppendError::Storage(_) => KAFKA_STORAGE_ERROR,
    }
}
