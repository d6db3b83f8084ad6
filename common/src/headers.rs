//! Record header names: the contract between edge, cloud and Kafka consumers (design brief,
//! section 3 "Records").
//!
//! An MQTT publish becomes a Kafka record whose value is the payload untouched, whose
//! timestamp is the time the edge received it (CreateTime), and whose headers are:
//!
//! | header                   | value (UTF-8 unless noted)                       | present           |
//! |--------------------------|--------------------------------------------------|-------------------|
//! | `mqtt.topic`             | the original MQTT topic name                     | always            |
//! | `mqtt.qos`               | `0`, `1` or `2` (the publisher's QoS)            | always            |
//! | `mqtt.retain`            | `true` / `false`                                 | always            |
//! | `mqtt.content_type`      | MQTT 5 content type                              | if set            |
//! | `mqtt.payload_format`    | MQTT 5 payload format indicator (`0`/`1`)        | if set            |
//! | `mqtt.response_topic`    | MQTT 5 response topic                            | if set            |
//! | `mqtt.correlation_data`  | MQTT 5 correlation data (raw bytes)              | if set            |
//! | `mqtt.message_expiry`    | MQTT 5 message expiry interval (seconds)         | if set            |
//! | `mqtt.user.<name>`       | one header per MQTT 5 user property, in order    | if set            |
//! | `edge.id`                | the id of the edge that received the publish     | via an edge       |
//! | `edge.seq`               | the edge buffer's arrival sequence (decimal)     | via an edge       |
//! | `edge.clock_synced`      | `true` if the edge's clock was synchronised      | via an edge       |
//!
//! The record key is the publishing MQTT client id unless configured otherwise.

/// Original MQTT topic name; always present.
pub const MQTT_TOPIC: &str = "mqtt.topic";
/// Publisher's QoS, `0`/`1`/`2`.
pub const MQTT_QOS: &str = "mqtt.qos";
/// Retain flag, `true`/`false`.
pub const MQTT_RETAIN: &str = "mqtt.retain";
/// MQTT 5 content type.
pub const MQTT_CONTENT_TYPE: &str = "mqtt.content_type";
/// MQTT 5 payload format indicator.
pub const MQTT_PAYLOAD_FORMAT: &str = "mqtt.payload_format";
/// MQTT 5 response topic.
pub const MQTT_RESPONSE_TOPIC: &str = "mqtt.response_topic";
/// MQTT 5 correlation data.
pub const MQTT_CORRELATION_DATA: &str = "mqtt.correlation_data";
/// MQTT 5 message expiry interval in seconds (decimal), counted from the record timestamp.
pub const MQTT_MESSAGE_EXPIRY: &str = "mqtt.message_expiry";
/// Prefix of one header per MQTT 5 user property: `mqtt.user.<property name>`.
pub const MQTT_USER_PREFIX: &str = "mqtt.user.";
/// Id of the edge that received the publish.
pub const EDGE_ID: &str = "edge.id";
/// The edge buffer's arrival sequence number (decimal).
pub const EDGE_SEQ: &str = "edge.seq";
/// Whether the edge's clock was synchronised when it stamped the record.
pub const EDGE_CLOCK_SYNCED: &str = "edge.clock_synced";

/// Header name for an MQTT 5 user property.
pub fn user_property(name: &str) -> String {
    format!("{MQTT_USER_PREFIX}{name}")
}

/// Encodes a boolean header value.
pub fn bool_value(v: bool) -> &'static [u8] {
    if v {
        b"true"
    } else {
        b"false"
    }
}
