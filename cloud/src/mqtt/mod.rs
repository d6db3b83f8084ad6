//! The cloud's MQTT view of the log (issue 4): MQTT 3.1.1 and 5 clients publish to and
//! subscribe on the same topics Kafka clients use, served from the one copy in the log.
//!
//! Layers, arrows one way: `codec` (bytes <-> packets, rumqttc's `mqttbytes`, no I/O)
//! -> `conn` (one socket: buffers, timeouts, the action loop) -> `session` (the
//! protocol state machine, no I/O) -> `hub` (topic and subscription indexes, session
//! registry, retained messages) + `cursor` (delivery positions in the log) ->
//! `crate::log` / `crate::storage`.
//!
//! - A publish is appended as one Kafka record (`records`) to the mapped topic
//!   (`common::topic`), creating the topic on first use; QoS 1/2 acknowledgements are
//!   sent once the append is durable (`mqtt.durable_publish`).
//! - A subscriber holds one cursor per matched partition and is woken by the append
//!   (`PartitionLog::register`), whoever appended (MQTT, Kafka Produce, an edge). A QoS
//!   0/1 message published over MQTT reaches it before its fsync (`recent`,
//!   `mqtt.deliver_before_sync`).
//! - A persistent session is its subscriptions plus one position per cursor, stored in
//!   the store's metadata; retained messages are stored there too and survive restarts.
//! - A delayed will (MQTT 5 Will Delay Interval) is stored there too, with its due time,
//!   in the same write as its session, so a restart or a kill keeps it (see `hub`).
//! - A share group (`share`) is one position per matched partition, stored there too,
//!   so a group resumes where it left off after being empty or after a restart.

mod actions;
pub(crate) mod codec;
mod conn;
mod cursor;
mod hub;
mod inbox;
mod persist;
mod recent;
pub(crate) mod records;
pub(crate) mod session;
mod share;
mod stored;
mod threads;
pub(crate) mod topic;
mod ws;

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod early_tests;
#[cfg(test)]
mod retained_tests;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod topic_tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use common::secret::constant_time_eq;
use serde::Deserialize;

pub(crate) use hub::Hub;
pub(crate) use threads::{Listeners, Threads};

/// Errors of the MQTT view.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("topic name: {0}")]
    TopicName(#[from] common::topic::Error),
    #[error("topic: {0}")]
    Topic(#[from] crate::log::TopicError),
    #[error("append: {0}")]
    Append(#[from] crate::log::partition::AppendError),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::Error),
    #[error("records: {0}")]
    Records(#[from] records::RecordError),
    #[error("codec: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The cloud is stopping (a clean stop): the connection stores its session and closes.
    #[error("the cloud is stopping")]
    Stopping,
}

/// Why the TLS listener could not be set up (shared with the Kafka listener).
pub use common::tls::TlsError;

/// `mqtt:` in the cloud config (documented with defaults in `configs/cloud.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Plain MQTT listener; `null` disables it.
    pub listen: Option<SocketAddr>,
    /// Threads serving MQTT connections (each a single-threaded runtime); 0: half the cores.
    pub threads: u16,
    /// MQTT over TLS (rustls); absent by default.
    pub tls: Option<TlsConfig>,
    /// MQTT over WebSocket (`ws`; `wss` with a certificate); absent by default.
    pub websocket: Option<WsConfig>,
    /// Largest packet accepted (and advertised as MQTT 5 Maximum Packet Size).
    pub max_packet_bytes: u32,
    /// QoS 1/2 publishes a client may have unacknowledged (MQTT 5 Receive Maximum).
    pub receive_maximum: u16,
    /// Cap on QoS 1/2 deliveries in flight to one client (also bounded by its Receive Maximum).
    pub max_inflight: u16,
    /// Topic aliases a client may use (MQTT 5 Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// MQTT 5 clients asking for a longer (or no) keep alive get this (Server Keep Alive); 0: no cap.
    pub max_keep_alive_secs: u16,
    /// Cap on the session expiry interval a client may ask for.
    pub max_session_expiry_secs: u32,
    /// How long a share group's stored positions outlive its last member (0: forgotten
    /// when it leaves; 4294967295: kept forever).
    pub share_group_expiry_secs: u32,
    /// A connection that sends no CONNECT within this is closed.
    pub connect_timeout_ms: u64,
    /// A connection whose socket accepts no bytes for this long is closed.
    pub write_timeout_ms: u64,
    /// QoS 1/2 acknowledgements wait for the storage sync policy (like Kafka acks=all).
    pub durable_publish: bool,
    /// Subscribers may receive QoS 0/1 messages published over MQTT before the append is
    /// durable (the publisher's acknowledgement still waits): `recent` module docs.
    pub deliver_before_sync: bool,
    /// username -> password; empty allows every client (no authentication).
    pub credentials: BTreeMap<String, String>,
    /// With `credentials` set, also accept clients that send no username.
    pub allow_anonymous: bool,
    /// Storage mode of topics created by an MQTT publish or subscribe, by MQTT topic
    /// filter (first match); other topics get `storage.default_mode`.
    pub topic_modes: Vec<TopicMode>,
    /// The top-level `acl` rules, compiled (`None`: no access control). Not a key of
    /// `mqtt:`; set from [`crate::Config::access`] at start.
    #[serde(skip)]
    pub acl: Option<std::sync::Arc<crate::acl::Acl>>,
}

/// One `mqtt.topic_modes` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicMode {
    /// MQTT topic filter (`+` and `#` allowed).
    pub filter: String,
    /// A `storage.mode` value: `persistent` or `memory`.
    pub mode: String,
}

/// The TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mutual
    /// TLS), and its common name is their user name (`crate::identity`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// The MQTT over WebSocket listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain; with `key`, the listener speaks TLS (`wss`).
    pub cert: Option<PathBuf>,
    /// PEM private key, with `cert`.
    pub key: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            threads: 0,
            tls: None,
            websocket: None,
            max_packet_bytes: 1 << 20,
            receive_maximum: 1024,
            max_inflight: 1024,
            topic_alias_maximum: 64,
            max_keep_alive_secs: 3600,
            max_session_expiry_secs: u32::MAX,
            share_group_expiry_secs: 86_400,
            connect_timeout_ms: 10_000,
            write_timeout_ms: 30_000,
            durable_publish: true,
            deliver_before_sync: true,
            credentials: BTreeMap::new(),
            allow_anonymous: false,
            topic_modes: Vec::new(),
            acl: None,
        }
    }
}

impl MqttConfig {
    /// The `storage.mode` of a topic first created for MQTT topic `name`, if a
    /// `topic_modes` filter matches it (the first that does).
    pub(crate) fn mode_of(&self, name: &str) -> Option<&str> {
        self.topic_modes
            .iter()
            .find(|m| common::topic::matches(&m.filter, name))
            .map(|m| m.mode.as_str())
    }

    /// Threads serving MQTT connections (`threads`, with 0 resolved).
    pub(crate) fn thread_count(&self) -> usize {
        match self.threads {
            0 => threads::auto_threads(),
            n => usize::from(n),
        }
    }

    /// Checks values serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (i, m) in self.topic_modes.iter().enumerate() {
            if let Err(why) = topic::validate_filter(&m.filter) {
                return Err((
                    "mqtt.topic_modes",
                    format!("entry {i}: filter {:?}: {why}", m.filter),
                ));
            }
            if let Err(why) = crate::log::StorageMode::parse(&m.mode) {
                return Err((
                    "mqtt.topic_modes",
                    format!("entry {i}: unknown mode {:?}: {why}", m.mode),
                ));
            }
        }
        if let Some(w) = &self.websocket {
            if w.cert.is_some() != w.key.is_some() {
                return Err((
                    "mqtt.websocket",
                    "cert and key go together (both for wss, neither for ws)".into(),
                ));
            }
        }
        if self.threads > 256 {
            return Err(("mqtt.threads", "must be at most 256".into()));
        }
        if self.max_packet_bytes < 64 || self.max_packet_bytes > 268_435_455 {
            return Err((
                "mqtt.max_packet_bytes",
                "must be between 64 and 268435455".into(),
            ));
        }
        if self.receive_maximum == 0 {
            return Err(("mqtt.receive_maximum", "must be at least 1".into()));
        }
        if self.max_inflight == 0 {
            return Err(("mqtt.max_inflight", "must be at least 1".into()));
        }
        if self.connect_timeout_ms == 0 {
            return Err(("mqtt.connect_timeout_ms", "must be at least 1".into()));
        }
        if self.write_timeout_ms == 0 {
            return Err(("mqtt.write_timeout_ms", "must be at least 1".into()));
        }
        Ok(())
    }

    /// What a client may do under `acl`: `user` is its authenticated user name (`None`:
    /// anonymous), `client` its id.
    pub(crate) fn grants(&self, user: Option<&str>, client: &str) -> crate::acl::Grants {
        match &self.acl {
            None => crate::acl::Grants::all(),
            Some(acl) => acl.grants(user, Some(client)),
        }
    }

    /// Whether a CONNECT with this login may connect.
    /// `login` is `(username, password)`; an absent or empty username is anonymous.
    pub(crate) fn authenticate(&self, login: Option<(&str, &str)>) -> bool {
        if self.credentials.is_empty() {
            return true;
        }
        match login.filter(|(u, _)| !u.is_empty()) {
            None => self.allow_anonymous,
            Some((u, given)) => self
                .credentials
                .get(u)
                .is_some_and(|p| constant_time_eq(p.as_bytes(), given.as_bytes())),
        }
    }
}

/// Loads the TLS certificate chain and key.
pub(crate) fn tls_acceptor(
    t: &TlsConfig,
) -> Result<tokio_rustls::TlsAcceptor, (common::tls::Field, TlsError)> {
    common::tls::acceptor(&t.cert, &t.key, t.client_ca.as_deref())
}

/// Loads the WebSocket listener's certificate chain and key, if it has them (`wss`).
pub(crate) fn ws_acceptor(w: &WsConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, TlsError> {
    match (&w.cert, &w.key) {
        (Some(cert), Some(key)) => common::tls::acceptor(cert, key, None)
            .map(Some)
            .map_err(|(_, e)| e),
        _ => Ok(None),
    }
}
