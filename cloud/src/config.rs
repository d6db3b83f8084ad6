//! The cloud's configuration: YAML, every key optional with a documented default
//! (`configs/cloud.yaml`), unknown keys rejected, values validated after parsing.
//! Errors name the file, the key and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::log::StorageMode;
use crate::storage::SyncPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {key}: {reason}")]
    Invalid {
        file: String,
        key: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the RocksDB store.
    pub data_dir: PathBuf,
    pub kafka: KafkaConfig,
    pub storage: StorageConfig,
    pub groups: GroupsConfig,
    /// The MQTT view of the log (issue 4).
    pub mqtt: crate::mqtt::MqttConfig,
    /// Where S3-backed topics (topic config `source`) read from, and their cache.
    pub s3: crate::source::S3Config,
    pub metrics: MetricsConfig,
    /// Who may read, write and administer which topics, over MQTT and Kafka alike
    /// (`crate::acl`); `None` (the default): no access control.
    pub acl: Option<Vec<crate::acl::RuleConfig>>,
}

/// Prometheus metrics (`crate::metrics`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the `GET /metrics` endpoint; `None` (the default) serves none.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub listen: SocketAddr,
    /// Host advertised in Metadata; defaults to the listen address's IP.
    pub advertised_host: Option<String>,
    /// Port advertised in Metadata; defaults to the bound listen port (set it when clients
    /// reach the broker through a proxy or NAT on another port).
    pub advertised_port: Option<u16>,
    pub max_frame_bytes: u64,
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    /// A connection that sends part of a frame and then stalls is closed after this.
    pub frame_timeout_ms: u64,
    /// A connection with no request at all is closed after this (Kafka's connections.max.idle.ms).
    pub idle_timeout_ms: u64,
    /// Cap on topics answered by one Metadata request for all topics.
    pub metadata_max_topics: usize,
    /// TLS on the Kafka listener (SSL / SASL_SSL); `None`: plain TCP.
    pub tls: Option<KafkaTls>,
    /// SASL on the Kafka listener (SASL_PLAINTEXT / SASL_SSL); `None`: no authentication.
    pub sasl: Option<SaslConfig>,
}

/// `kafka.tls`: the listener's certificate, and a CA that makes client certificates
/// mandatory (mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `kafka.sasl`: SASL users (PLAIN and SCRAM check the same passwords).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// Enabled mechanisms (Kafka's `sasl.enabled.mechanisms`): `PLAIN` (the default),
    /// `SCRAM-SHA-256`, `SCRAM-SHA-512`.
    #[serde(default = "default_mechanisms")]
    pub mechanisms: Vec<String>,
    /// username -> password.
    pub users: BTreeMap<String, String>,
}

fn default_mechanisms() -> Vec<String> {
    vec!["PLAIN".into()]
}

impl KafkaConfig {
    /// Kafka's name for this listener's security: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL.
    pub fn security_protocol(&self) -> &'static str {
        match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `group` (default), `interval` or `none`.
    pub sync: String,
    pub sync_interval_ms: u64,
    /// Under `sync: group`: how often writes acknowledged without an fsync (topics with
    /// `storage.mode: hybrid`, Produce acks=1, MQTT QoS 0) are fsynced.
    pub hybrid_flush_ms: u64,
    pub retention_check_interval_ms: u64,
    /// `storage.mode` of topics created without one: `persistent` (default), `hybrid` or
    /// `memory`.
    pub default_mode: String,
    /// Byte cap of a memory partition whose topic sets no `retention.bytes`.
    pub memory_partition_bytes: u64,
    /// Byte budget of all memory partitions together.
    pub memory_total_bytes: u64,
    /// Flush and compaction write SST files past the page cache (`O_DIRECT`).
    pub direct_io: bool,
    /// Where `storage.mode=tiered` topics move their older batches.
    pub tiered: crate::tier::TieredConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    pub initial_rebalance_delay_ms: u64,
    pub min_session_timeout_ms: u64,
    pub max_session_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data/cloud"),
            kafka: KafkaConfig::default(),
            storage: StorageConfig::default(),
            groups: GroupsConfig::default(),
            mqtt: crate::mqtt::MqttConfig::default(),
            s3: crate::source::S3Config::default(),
            metrics: MetricsConfig::default(),
            acl: None,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_host: None,
            advertised_port: None,
            max_frame_bytes: 100 << 20,
            auto_create_topics: true,
            default_partitions: 1,
            frame_timeout_ms: 30_000,
            idle_timeout_ms: 600_000,
            metadata_max_topics: 2_000_000,
            tls: None,
            sasl: None,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            sync: "group".into(),
            sync_interval_ms: 100,
            hybrid_flush_ms: 1000,
            retention_check_interval_ms: 300_000,
            default_mode: "persistent".into(),
            memory_partition_bytes: 64 << 20,
            memory_total_bytes: 1 << 30,
            direct_io: true,
            tiered: crate::tier::TieredConfig::default(),
        }
    }
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            initial_rebalance_delay_ms: 3_000,
            min_session_timeout_ms: 1_000,
            max_session_timeout_ms: 300_000,
        }
    }
}

impl Config {
    /// Loads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            file: file.to_string(),
            key,
            reason,
        };
        let de = serde_yaml::Deserializer::from_str(text);
        let cfg: Config = match serde_path_to_error::deserialize(de) {
            Ok(c) => c,
            Err(e) => {
                let key = e.path().to_string();
                let key = if key == "." {
                    "(top level)".to_string()
                } else {
                    key
                };
                let mut reason = e.into_inner().to_string();
                // serde_yaml names a nested key itself ("mqtt.listen: invalid ..."):
                // the key is said once, in front.
                if let Some(rest) = reason.strip_prefix(&format!("{key}: ")) {
                    reason = rest.to_string();
                }
                // serde_yaml appends " at line N column M"; keep it: it helps.
                if reason.is_empty() {
                    reason = "invalid value".into();
                }
                return Err(invalid(key, reason));
            }
        };
        cfg.validate().map_err(|(k, r)| invalid(k.to_string(), r))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.kafka.max_frame_bytes < 1024 || self.kafka.max_frame_bytes > i32::MAX as u64 {
            return Err((
                "kafka.max_frame_bytes",
                "must be between 1024 and 2147483647".into(),
            ));
        }
        if self.kafka.default_partitions == 0 {
            return Err(("kafka.default_partitions", "must be at least 1".into()));
        }
        if self.kafka.frame_timeout_ms == 0 {
            return Err(("kafka.frame_timeout_ms", "must be at least 1".into()));
        }
        if self.kafka.idle_timeout_ms == 0 {
            return Err(("kafka.idle_timeout_ms", "must be at least 1".into()));
        }
        if let Some(sasl) = &self.kafka.sasl {
            if sasl.users.is_empty() {
                return Err(("kafka.sasl.users", "must name at least one user".into()));
            }
            if sasl.mechanisms.is_empty() {
                return Err(("kafka.sasl.mechanisms", "must not be empty".into()));
            }
            if let Some(m) =
                (sasl.mechanisms.iter()).find(|m| common::kafka::Mechanism::from_name(m).is_none())
            {
                return Err((
                    "kafka.sasl.mechanisms",
                    format!(
                        "unsupported mechanism {m:?}; PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 \
                         are available"
                    ),
                ));
            }
        }
        self.sync_policy()?;
        if self.storage.hybrid_flush_ms == 0 {
            return Err(("storage.hybrid_flush_ms", "must be at least 1".into()));
        }
        if self.storage.retention_check_interval_ms == 0 {
            return Err((
                "storage.retention_check_interval_ms",
                "must be at least 1".into(),
            ));
        }
        self.storage.tiered.validate()?;
        if self.default_mode()? == StorageMode::Tiered && self.storage.tiered.target.is_none() {
            return Err((
                "storage.default_mode",
                "tiered needs storage.tiered.target".into(),
            ));
        }
        if self.storage.memory_partition_bytes == 0 {
            return Err((
                "storage.memory_partition_bytes",
                "must be at least 1".into(),
            ));
        }
        if self.storage.memory_total_bytes == 0 {
            return Err(("storage.memory_total_bytes", "must be at least 1".into()));
        }
        if self.groups.min_session_timeout_ms > self.groups.max_session_timeout_ms {
            return Err((
                "groups.min_session_timeout_ms",
                "must not exceed groups.max_session_timeout_ms".into(),
            ));
        }
        self.mqtt.validate()?;
        if self.storage.tiered.target.is_none() {
            if let Some(i) = self
                .mqtt
                .topic_modes
                .iter()
                .position(|m| m.mode == "tiered")
            {
                return Err((
                    "mqtt.topic_modes",
                    format!("entry {i}: tiered needs storage.tiered.target"),
                ));
            }
        }
        self.s3.validate()?;
        self.access()?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(("data_dir", "must not be empty".into()));
        }
        Ok(())
    }

    /// The `acl` rules, checked (`None`: no access control).
    pub fn access(&self) -> Result<Option<crate::acl::Acl>, (&'static str, String)> {
        let Some(rules) = &self.acl else {
            return Ok(None);
        };
        // Client certificates name users no list here holds: with a listener that
        // takes them, any name may be a real client.
        let certificates = self
            .kafka
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some())
            || self
                .mqtt
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca.is_some());
        let known = |u: &str| {
            certificates
                || self.mqtt.credentials.contains_key(u)
                || self
                    .kafka
                    .sasl
                    .as_ref()
                    .is_some_and(|s| s.users.contains_key(u))
        };
        crate::acl::Acl::new(rules, known).map(Some)
    }

    pub fn default_mode(&self) -> Result<StorageMode, (&'static str, String)> {
        StorageMode::parse(&self.storage.default_mode).map_err(|why| {
            (
                "storage.default_mode",
                format!("unknown mode {:?}: {why}", self.storage.default_mode),
            )
        })
    }

    pub fn sync_policy(&self) -> Result<SyncPolicy, (&'static str, String)> {
        match self.storage.sync.as_str() {
            "group" => Ok(SyncPolicy::Group),
            "none" => Ok(SyncPolicy::None),
            "interval" if self.storage.sync_interval_ms == 0 => Err((
                "storage.sync_interval_ms",
                "must be at least 1 with sync: interval".into(),
            )),
            "interval" => Ok(SyncPolicy::Interval(Duration::from_millis(
                self.storage.sync_interval_ms,
            ))),
            other => Err((
                "storage.sync",
                format!("unknown policy {other:?}; expected group, interval or none"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "cloud.yaml")
            .expect_err("must fail")
            .to_string()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("{}", "f").expect("defaults");
        assert_eq!(c.kafka.listen.port(), 9092);
        assert_eq!(c.sync_policy(), Ok(SyncPolicy::Group));
        assert_eq!(c.kafka.security_protocol(), "PLAINTEXT");
        let c = Config::parse(
            "kafka:\n  tls: {cert: c, key: k}\n  sasl: {users: {a: b}}\n",
            "f",
        )
        .expect("sasl_ssl");
        assert_eq!(c.kafka.security_protocol(), "SASL_SSL");
        assert_eq!(
            c.kafka.sasl.map(|s| s.mechanisms),
            Some(vec!["PLAIN".into()])
        );
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        // (config, how the error must start)
        let starts = [
            ("kafka:\n  listen: nowhere\n", "cloud.yaml: kafka.listen:"),
            (
                "storage:\n  sync: sometimes\n",
                "cloud.yaml: storage.sync: unknown policy",
            ),
            (
                "mqtt:\n  receive_maximum: 0\n",
                "cloud.yaml: mqtt.receive_maximum:",
            ),
            ("mqtt:\n  threads: 257\n", "cloud.yaml: mqtt.threads:"),
            (
                "kafka:\n  sasl:\n    users: {}\n",
                "cloud.yaml: kafka.sasl.users:",
            ),
            (
                "kafka:\n  sasl:\n    mechanisms: [PLAIN, GSSAPI]\n    users: {a: b}\n",
                "cloud.yaml: kafka.sasl.mechanisms:",
            ),
            (
                "storage:\n  default_mode: ram\n",
                "cloud.yaml: storage.default_mode: unknown mode \"ram\"",
            ),
            (
                "mqtt:\n  topic_modes:\n    - {filter: \"a/#/b\", mode: memory}\n",
                "cloud.yaml: mqtt.topic_modes: entry 0: filter",
            ),
            (
                "mqtt:\n  topic_modes:\n    - {filter: \"a/#\", mode: fast}\n",
                "cloud.yaml: mqtt.topic_modes: entry 0: unknown mode",
            ),
            (
                "storage:\n  memory_partition_bytes: 0\n",
                "cloud.yaml: storage.memory_partition_bytes:",
            ),
            (
                "storage:\n  memory_total_bytes: 0\n",
                "cloud.yaml: storage.memory_total_bytes:",
            ),
        ];
        for (yaml, prefix) in starts {
            let e = err(yaml);
            assert!(e.starts_with(prefix), "{yaml:?}: {e}");
        }
        let e = err("kafka:\n  lisen: 127.0.0.1:1\n");
        assert!(e.contains("unknown field") && e.contains("lisen"), "{e}");
        let e = err("kafka:\n  max_frame_bytes: 10\n");
        assert!(e.contains("kafka.max_frame_bytes"), "{e}");
        let e = err("groups:\n  min_session_timeout_ms: 10\n  max_session_timeout_ms: 5\n");
        assert!(e.contains("groups.min_session_timeout_ms"), "{e}");
        let e = err("mqtt:\n  lisen: 127.0.0.1:1\n");
        assert!(e.contains("unknown field") && e.contains("lisen"), "{e}");
        let e = err("mqtt:\n  tls:\n    listen: 127.0.0.1:0\n");
        assert!(e.contains("mqtt.tls"), "{e}");
        let e = err("kafka:\n  tls:\n    cert: c.pem\n");
        assert!(
            e.starts_with("cloud.yaml: kafka.tls:") && e.contains("key"),
            "{e}"
        );
        let e = err("storage:\n  direct_io: maybe\n");
        assert!(e.contains("storage.direct_io"), "{e}");
        // The key once, in front of serde_yaml's reason (which names it too).
        let e = err("mqtt:\n  deliver_before_sync: maybe\n");
        assert!(
            e.starts_with("cloud.yaml: mqtt.deliver_before_sync: invalid type")
                && e.matches("deliver_before_sync").count() == 1,
            "{e}"
        );
        let e = err("storage:\n  hybrid_flush_ms: 0\n");
        assert!(e.contains("storage.hybrid_flush_ms"), "{e}");
        let e = err("s3:\n  endpoint: http://127.0.0.1:9000\n");
        assert!(
            e.starts_with("cloud.yaml: s3.endpoint:") && e.contains("allow_http"),
            "{e}"
        );
        let e = err("s3:\n  access_key_id: a\n");
        assert!(e.starts_with("cloud.yaml: s3.access_key_id:"), "{e}");
        let e = err("s3:\n  allowed_sources: [\"s3://ok/x\", \"gs://b\"]\n");
        assert!(
            e.starts_with("cloud.yaml: s3.allowed_sources: entry 1:"),
            "{e}"
        );
        let e = err("s3:\n  max_object_bytes: 0\n");
        assert!(e.starts_with("cloud.yaml: s3.max_object_bytes:"), "{e}");
        let e = err("s3:\n  cache:\n    memory: 1\n");
        assert!(e.contains("s3.cache") && e.contains("unknown field"), "{e}");
        let e = err("storage:\n  default_mode: tiered\n");
        assert!(
            e.starts_with("cloud.yaml: storage.default_mode:") && e.contains("target"),
            "{e}"
        );
        let e = err("storage:\n  tiered:\n    target: http://b/p\n");
        assert!(e.starts_with("cloud.yaml: storage.tiered.target:"), "{e}");
        let e = err("storage:\n  tiered:\n    segment_bytes: 1\n");
        assert!(
            e.starts_with("cloud.yaml: storage.tiered.segment_bytes:"),
            "{e}"
        );
    }

    #[test]
    fn shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cloud.yaml");
        Config::load(&path).expect("configs/cloud.yaml is valid");
    }
}
