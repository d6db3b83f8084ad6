//! `configs/edge.yaml`: typed, defaults for every key, unknown keys rejected, validated
//! after loading. Errors name the file, the key and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::buffer::{BufferConfig, FullPolicy, SyncPolicy};

mod downlink;
pub use downlink::{DownlinkConfig, DownlinkLogin};

/// A configuration error: file, key, reason.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The offending key (dotted path).
    pub key: String,
    /// Why it is wrong.
    pub reason: String,
}

/// The whole edge configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identifies this edge in the `edge.id` header.
    pub edge_id: String,
    /// Directory for the sled buffer.
    pub data_dir: PathBuf,
    /// MQTT listeners.
    pub mqtt: MqttConfig,
    /// Which topics go up, with what priority.
    pub uplink: UplinkConfig,
    /// The durable buffer.
    pub buffer: BufferSection,
    /// The Kafka-protocol uplink.
    pub cloud: CloudConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Cloud-to-gateway messages (off unless `downlink.broker` is set).
    pub downlink: DownlinkConfig,
}

/// MQTT listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// MQTT 3.1.1 listener (null disables).
    pub v4_listen: Option<SocketAddr>,
    /// MQTT 5 listener (null disables).
    pub v5_listen: Option<SocketAddr>,
    /// TLS for both listeners.
    pub tls: Option<TlsFiles>,
    /// username -> password; empty allows anonymous clients.
    pub credentials: BTreeMap<String, String>,
    /// Largest accepted publish payload.
    pub max_payload_bytes: usize,
    /// Largest number of QoS 1/2 publishes in flight per client.
    pub max_inflight: usize,
    /// Time a client has to send CONNECT.
    pub connect_timeout_ms: u16,
    /// Maximum concurrent connections.
    pub max_connections: usize,
    /// Router log segment size (per subscription filter, in memory).
    pub router_segment_bytes: usize,
    /// Router log segments kept in memory per filter.
    pub router_segment_count: usize,
}

/// PEM files for a TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA for client certificates (mutual TLS), optional.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// One uplink filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkFilter {
    /// MQTT topic filter (`+`, `#` allowed).
    pub filter: String,
    /// Priority class: higher survives quota pressure longer.
    #[serde(default)]
    pub priority: u8,
}

/// What goes up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Filters in order; the first match decides the priority.
    pub filters: Vec<UplinkFilter>,
    /// Record key: `client_id` or `none`.
    pub key: KeyMode,
}

/// Record key choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    /// The publisher's MQTT client id.
    ClientId,
    /// No key.
    None,
}

/// Sync policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncName {
    /// Group commit per batch; QoS 1/2 acks wait for it.
    Always,
    /// Every `sync_interval_ms`.
    Interval,
}

/// Full-buffer policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// Backpressure.
    Block,
    /// Evict oldest.
    DropOldest,
    /// Refuse newest.
    DropNewest,
}

/// Buffer settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferSection {
    /// Byte quota.
    pub quota_bytes: u64,
    /// Policy when the quota is reached.
    pub full_policy: PolicyName,
    /// `always` or `interval`.
    pub sync: SyncName,
    /// Interval for `sync: interval`.
    pub sync_interval_ms: u64,
    /// Largest batch file (the unit the replicator reads and a quota eviction drops); a
    /// file of large records grows past it until it holds 16 records, up to 4 x this.
    pub batch_max_bytes: usize,
    /// sled page cache.
    pub cache_bytes: u64,
    /// Write files of large records with `O_DIRECT`, past the page cache...
    pub direct_io: bool,
    /// ...while more than this many bytes are buffered.
    pub direct_io_backlog_bytes: u64,
}

/// Uplink (Kafka) settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// `host:port` of a bootstrap broker.
    pub bootstrap: String,
    /// Kafka client id.
    pub client_id: String,
    /// `zstd` or `none`.
    pub compression: CompressionName,
    /// zstd level, 1 (fastest, the default) to 19 (smallest); zstd only.
    pub compression_level: i32,
    /// Largest Produce batch per partition.
    pub batch_max_bytes: usize,
    /// Largest RecordBatch the brokers accept, encoded and compressed (Kafka's
    /// `max.message.bytes`): batches are cut under it, and a record that alone would
    /// exceed it is dropped and counted (`too_large_for_cloud`).
    pub max_message_bytes: usize,
    /// How long a caught-up replicator waits after the next commit before it reads, so
    /// the records of several group commits travel in one request (Kafka's `linger.ms`).
    pub linger_ms: u64,
    /// Produce requests in flight per connection (at most 5: each carries one batch per
    /// partition, so this is the idempotent producer's per-partition limit too).
    pub max_in_flight: usize,
    /// Produce timeout.
    pub request_timeout_ms: u64,
    /// First reconnect delay.
    pub backoff_initial_ms: u64,
    /// Largest reconnect delay.
    pub backoff_max_ms: u64,
    /// Uplink bandwidth cap in bytes/s on the wire (after compression); 0 = unlimited.
    pub max_bytes_per_sec: u64,
    /// TLS to the brokers (SSL / SASL_SSL); `None`: plain TCP.
    pub tls: Option<CloudTls>,
    /// SASL to the brokers (SASL_PLAINTEXT / SASL_SSL); `None`: no authentication.
    pub sasl: Option<CloudSasl>,
    /// Which records go first when there is a backlog.
    pub drain: DrainPolicy,
    /// Create a topic the brokers do not know with CreateTopics (one partition, the
    /// cluster's default replication factor, `topic_configs`), for clusters that do not
    /// create topics on Metadata (Kafka's `auto.create.topics.enable=false`).
    pub create_topics: bool,
    /// Configs for the topics the edge creates (`retention.ms`, ...). When set, topics
    /// are created with CreateTopics rather than by Metadata, which would apply the
    /// broker's defaults.
    #[serde(deserialize_with = "topic_configs")]
    pub topic_configs: Vec<(String, String)>,
}

/// `cloud.topic_configs`: a map of names to scalars, kept as Kafka's strings.
fn topic_configs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, String)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::Text(s) => s,
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// `cloud.tls`: how the uplink verifies the brokers and, optionally, identifies itself.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudTls {
    /// PEM CA bundle for the brokers' certificates; `None`: the system bundle.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS); needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Name the broker certificates must carry, instead of the dialled host.
    pub server_name: Option<String>,
}

impl CloudTls {
    /// Reads the files and builds the TLS client. `keys` names, for errors, the config
    /// keys of `ca`, `cert`, `key` and `server_name` in that order.
    pub fn connector(
        &self,
        keys: [&'static str; 4],
    ) -> Result<common::tls::Connector, (&'static str, String)> {
        let [ca, cert, key, server_name] = keys;
        let cert_key = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            (Some(_), None) => return Err((key, format!("required with {cert}"))),
            (None, Some(_)) => return Err((cert, format!("required with {key}"))),
        };
        let client = common::tls::ClientTls {
            ca: self.ca.clone(),
            cert_key,
            server_name: self.server_name.clone(),
        };
        client.connector().map_err(|(field, e)| {
            let k = match field {
                "ca" => ca,
                "cert" => cert,
                "key" => key,
                _ => server_name,
            };
            (k, e.to_string())
        })
    }
}

/// `cloud.sasl`: SASL credentials.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSasl {
    /// `PLAIN` (the default), `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default = "plain")]
    pub mechanism: String,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for CloudSasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

fn plain() -> String {
    "PLAIN".into()
}

impl CloudConfig {
    /// Builds the uplink's connector: reads the TLS files (so rotated certificates are
    /// picked up at the next reconnect). The error names the key.
    pub fn connector(&self) -> Result<common::kafka::Connector, (&'static str, String)> {
        let mut c = common::kafka::Connector::plaintext(&self.client_id);
        c.connect_timeout = std::time::Duration::from_millis(self.request_timeout_ms);
        if let Some(t) = &self.tls {
            c.tls = Some(t.connector([
                "cloud.tls.ca",
                "cloud.tls.cert",
                "cloud.tls.key",
                "cloud.tls.server_name",
            ])?);
        }
        if let Some(s) = &self.sasl {
            let Some(mechanism) = common::kafka::Mechanism::from_name(&s.mechanism) else {
                return Err((
                    "cloud.sasl.mechanism",
                    format!(
                        "unsupported mechanism {:?}; PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 \
                         are available",
                        s.mechanism
                    ),
                ));
            };
            if s.username.is_empty() {
                return Err(("cloud.sasl.username", "must not be empty".into()));
            }
            c.sasl = Some(common::kafka::Credentials {
                mechanism,
                username: s.username.clone(),
                password: s.password.clone(),
            });
        }
        Ok(c)
    }
}

/// Drain order when the uplink returns to a backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainPolicy {
    /// Oldest first: the cloud receives every topic in arrival order.
    BacklogFirst,
    /// Records that arrive after the uplink came back go ahead of the backlog; each of the
    /// two streams stays in order, the `edge.seq` header gives the total order.
    LiveFirst,
}

/// Compression names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionName {
    /// zstd.
    Zstd,
    /// gzip (fastest level), for clients and brokers without zstd.
    Gzip,
    /// LZ4 (fast level).
    Lz4,
    /// None.
    None,
}

/// Metrics endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address (null disables).
    pub listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            edge_id: "edge".into(),
            data_dir: PathBuf::from("data/edge"),
            mqtt: MqttConfig::default(),
            uplink: UplinkConfig::default(),
            buffer: BufferSection::default(),
            cloud: CloudConfig::default(),
            metrics: MetricsConfig::default(),
            downlink: DownlinkConfig::default(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            v4_listen: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            v5_listen: Some(SocketAddr::from(([127, 0, 0, 1], 1884))),
            tls: None,
            credentials: BTreeMap::new(),
            max_payload_bytes: 1 << 20,
            max_inflight: 100,
            connect_timeout_ms: 5000,
            max_connections: 1000,
            router_segment_bytes: 1 << 20,
            router_segment_count: 4,
        }
    }
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            filters: vec![UplinkFilter {
                filter: "#".into(),
                priority: 0,
            }],
            key: KeyMode::ClientId,
        }
    }
}

impl Default for BufferSection {
    fn default() -> Self {
        BufferSection {
            quota_bytes: 1 << 30,
            full_policy: PolicyName::DropOldest,
            sync: SyncName::Always,
            sync_interval_ms: 100,
            batch_max_bytes: 256 << 10,
            // 4 MiB: 1 GB drains, 5 alternating pairs against 8 MiB: peak RSS median 29.1
            // vs 30.6 MB at the same rate; 100 B ingest unchanged (session 13).
            cache_bytes: 4 << 20,
            direct_io: true,
            direct_io_backlog_bytes: crate::buffer::DIRECT_BACKLOG_BYTES,
        }
    }
}

/// Kafka's default `max.message.bytes` (topic) and `message.max.bytes` (broker), which
/// the cloud applies too.
pub const MAX_MESSAGE_BYTES: usize = 1_048_588;

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            bootstrap: "127.0.0.1:9092".into(),
            client_id: "edge".into(),
            compression: CompressionName::Zstd,
            compression_level: common::kafka::record_batch::ZSTD_LEVEL,
            batch_max_bytes: 1 << 20,
            max_message_bytes: MAX_MESSAGE_BYTES,
            linger_ms: 20,
            max_in_flight: 5,
            request_timeout_ms: 30_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
            max_bytes_per_sec: 0,
            tls: None,
            sasl: None,
            drain: DrainPolicy::BacklogFirst,
            create_topics: true,
            topic_configs: Vec::new(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
        }
    }
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: file.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let cfg: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                // serde_yaml prefixes nested errors with the dotted path: split it off.
                let msg = e.to_string();
                match msg.split_once(": ") {
                    Some((path, rest)) if !path.contains(' ') => err(path, rest.to_owned()),
                    _ => err("(document)", msg),
                }
            })?
        };
        cfg.validate().map_err(|(k, r)| err(k, r))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.edge_id.is_empty() {
            return Err(("edge_id", "must not be empty".into()));
        }
        if self.mqtt.v4_listen.is_none() && self.mqtt.v5_listen.is_none() {
            return Err((
                "mqtt",
                "at least one of v4_listen, v5_listen is required".into(),
            ));
        }
        for f in &self.uplink.filters {
            if !crate::filter::is_valid_filter(&f.filter) {
                return Err((
                    "uplink.filters",
                    format!("invalid MQTT filter {:?}", f.filter),
                ));
            }
        }
        if self.buffer.quota_bytes < 64 << 10 {
            return Err(("buffer.quota_bytes", "must be at least 65536".into()));
        }
        if self.buffer.sync_interval_ms == 0 {
            return Err(("buffer.sync_interval_ms", "must be positive".into()));
        }
        if self.buffer.batch_max_bytes == 0 {
            return Err(("buffer.batch_max_bytes", "must be positive".into()));
        }
        if !(1..=5).contains(&self.cloud.max_in_flight) {
            return Err((
                "cloud.max_in_flight",
                "must be 1..=5 (idempotent producer)".into(),
            ));
        }
        let levels = common::kafka::record_batch::ZSTD_LEVELS;
        if !levels.contains(&self.cloud.compression_level) {
            return Err((
                "cloud.compression_level",
                format!(
                    "must be {} to {} (zstd levels)",
                    levels.start(),
                    levels.end()
                ),
            ));
        }
        if self.cloud.max_message_bytes < 4096 {
            return Err(("cloud.max_message_bytes", "must be at least 4096".into()));
        }
        if self.cloud.linger_ms > 10_000 {
            return Err(("cloud.linger_ms", "must be at most 10000".into()));
        }
        if self.cloud.bootstrap.is_empty() {
            return Err(("cloud.bootstrap", "must not be empty".into()));
        }
        self.cloud.connector()?;
        if self.mqtt.max_inflight == 0 || self.mqtt.max_payload_bytes == 0 {
            return Err(("mqtt.max_inflight", "limits must be positive".into()));
        }
        self.downlink.validate()?;
        Ok(())
    }

    /// The buffer settings.
    pub fn buffer_config(&self) -> BufferConfig {
        BufferConfig {
            dir: self.data_dir.join("buffer"),
            quota_bytes: self.buffer.quota_bytes,
            full_policy: match self.buffer.full_policy {
                PolicyName::Block => FullPolicy::Block,
                PolicyName::DropOldest => FullPolicy::DropOldest,
                PolicyName::DropNewest => FullPolicy::DropNewest,
            },
            sync: match self.buffer.sync {
                SyncName::Always => SyncPolicy::Always,
                SyncName::Interval => {
                    SyncPolicy::Interval(Duration::from_millis(self.buffer.sync_interval_ms))
                }
            },
            batch_max_bytes: self.buffer.batch_max_bytes,
            cache_bytes: self.buffer.cache_bytes,
            direct_io: self.buffer.direct_io,
            direct_io_backlog_bytes: self.buffer.direct_io_backlog_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_shipped_file_parse() {
        let c = Config::parse("", "x.yaml").unwrap();
        assert_eq!(c.buffer.quota_bytes, 1 << 30);
        let shipped = include_str!("../../configs/edge.yaml");
        Config::parse(shipped, "configs/edge.yaml").unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse("buffer:\n  full_policy: explode\n", "e.yaml").unwrap_err();
        assert_eq!(e.key, "buffer.full_policy", "{e}");
        let e = Config::parse("mqtt:\n  bogus: 1\n", "e.yaml").unwrap_err();
        assert_eq!(e.key, "mqtt", "{e}");
        assert!(e.reason.contains("bogus"), "{e}");
        let e = Config::parse("cloud:\n  linger_ms: 60000\n", "e.yaml").unwrap_err();
        assert_eq!(e.key, "cloud.linger_ms");
        let e = Config::parse("cloud:\n  max_message_bytes: 100\n", "e.yaml").unwrap_err();
        assert_eq!(e.key, "cloud.max_message_bytes");
        let e = Config::parse("cloud:\n  topic_configs: {a: [1]}\n", "e.yaml").unwrap_err();
        assert!(e.key.starts_with("cloud.topic_configs"), "{e}");
        let c = Config::parse(
            "cloud:\n  topic_configs: {retention.ms: 3600000, cleanup.policy: delete}\n",
            "e.yaml",
        )
        .unwrap();
        assert_eq!(
            c.cloud.topic_configs,
            [("cleanup.policy", "delete"), ("retention.ms", "3600000")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let e = Config::parse("cloud:\n  max_in_flight: 9\n", "e.yaml").unwrap_err();
        assert_eq!(e.key, "cloud.max_in_flight");
        assert!(e.to_string().starts_with("e.yaml: cloud.max_in_flight: "));
        for bad in ["0", "20", "-1"] {
            let yaml = format!("cloud:\n  compression_level: {bad}\n");
            let e = Config::parse(&yaml, "e.yaml").unwrap_err();
            assert_eq!(e.key, "cloud.compression_level", "{e}");
            assert!(e.reason.contains("1 to 19"), "{e}");
        }
        let c = Config::parse("cloud:\n  compression_level: 19\n", "e.yaml").unwrap();
        assert_eq!(c.cloud.compression_level, 19);
        let e = Config::parse("cloud:\n  compression: brotli\n", "e.yaml").unwrap_err();
        assert_eq!(e.key, "cloud.compression", "{e}");
        for (name, want) in [
            ("zstd", CompressionName::Zstd),
            ("gzip", CompressionName::Gzip),
            ("lz4", CompressionName::Lz4),
            ("none", CompressionName::None),
        ] {
            let yaml = format!("cloud:\n  compression: {name}\n");
            assert_eq!(
                Config::parse(&yaml, "e.yaml").unwrap().cloud.compression,
                want
            );
        }
        let e = Config::parse("buffer:\n  direct_io: maybe\n", "e.yaml").unwrap_err();
        assert_eq!(e.key, "buffer.direct_io", "{e}");
        let c = Config::parse("buffer:\n  direct_io: false\n", "e.yaml").unwrap();
        assert!(!c.buffer_config().direct_io);
        assert!(
            Config::parse("", "e.yaml")
                .unwrap()
                .buffer_config()
                .direct_io
        );
    }

    #[test]
    fn uplink_security_errors_name_the_key() {
        let e = Config::parse("cloud:\n  tls:\n    cert: /nonexistent/c.pem\n", "e.yaml");
        assert_eq!(e.unwrap_err().key, "cloud.tls.key");
        let e = Config::parse("cloud:\n  tls:\n    ca: /nonexistent/ca.pem\n", "e.yaml");
        let e = e.unwrap_err();
        assert_eq!(e.key, "cloud.tls.ca");
        assert!(e.reason.contains("/nonexistent/ca.pem"), "{e}");
        let e = Config::parse(
            "cloud:\n  sasl:\n    mechanism: GSSAPI\n    username: u\n    password: p\n",
            "e.yaml",
        );
        assert_eq!(e.unwrap_err().key, "cloud.sasl.mechanism");
        let e = Config::parse("cloud:\n  sasl:\n    username: u\n", "e.yaml").unwrap_err();
        assert_eq!(e.key, "cloud.sasl", "{e}");
        assert!(e.reason.contains("password"), "{e}");
        let c = Config::parse(
            "cloud:\n  sasl:\n    username: u\n    password: hunter2\n",
            "e.yaml",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
