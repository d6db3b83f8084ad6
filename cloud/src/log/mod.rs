//! The log: every topic's partitions over the one store, plus topic metadata.
//!
//! Topics live in memory as a name -> [`Topic`] map loaded at start (about 200 bytes each,
//! so a million topics is ~200 MB); a partition's offsets and producer state load lazily on
//! first use, so start-up cost does not grow with data volume.

pub(crate) mod batch;
pub(crate) mod compaction;
pub(crate) mod memory;
pub(crate) mod partition;
pub(crate) mod producer;
pub(crate) mod retention;
pub(crate) mod waiters;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::storage::{self, Store, TopicRecord, WriteSet};
use partition::PartitionLog;

/// Topic-level refusals (mapped to Kafka error codes by the API layer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TopicError {
    #[error("topic already exists")]
    Exists,
    #[error("unknown topic or partition")]
    Unknown,
    #[error("invalid topic name: {0}")]
    InvalidName(&'static str),
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),
    #[error("invalid config {key}: {reason}")]
    InvalidConfig { key: String, reason: String },
    #[error("storage: {0}")]
    Storage(#[from] storage::Error),
    #[error("topic is backed by S3 (topic config source) and read-only")]
    ReadOnly,
}

/// Topic configs the broker understands, with Kafka's defaults (and ours for
/// `storage.mode`, which Kafka does not have).
pub(crate) const TOPIC_CONFIG_DEFAULTS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("compression.type", "producer"),
    ("delete.retention.ms", "86400000"),
    ("max.message.bytes", "1048588"),
    ("message.timestamp.type", "CreateTime"),
    ("min.cleanable.dirty.ratio", "0.5"),
    ("min.compaction.lag.ms", "0"),
    ("min.insync.replicas", "1"),
    ("retention.bytes", "-1"),
    ("retention.ms", "604800000"),
    ("segment.bytes", "1073741824"),
    ("storage.mode", "persistent"),
    (crate::tier::LOCAL_BYTES, "-2"),
];

/// A topic config's default ([`TOPIC_CONFIG_DEFAULTS`]).
pub(crate) fn default_config(key: &str) -> Option<&'static str> {
    TOPIC_CONFIG_DEFAULTS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
}

/// Whether a `cleanup.policy` value lists `policy` (`delete`, `compact`).
fn has_policy(value: &str, policy: &str) -> bool {
    value.split(',').any(|x| x.trim() == policy)
}

/// Topic configs that fix where a topic's batches are: never altered.
pub(crate) const FIXED_AT_CREATION: [&str; 3] =
    ["storage.mode", crate::source::SOURCE, crate::source::FORMAT];

/// Where a topic's batches live (topic config `storage.mode`, fixed at creation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// In the store, written under the sync policy (the default).
    Persistent,
    /// In this process only ([`memory`]): never written to disk, gone at a restart.
    Memory,
    /// In the store, but acknowledged without waiting for an fsync: written to the WAL
    /// (so a process kill loses nothing) and fsynced every `storage.hybrid_flush_ms`
    /// (a power cut loses at most that much).
    Hybrid,
    /// In the store like `Persistent`; older batches move to object storage and stay
    /// readable at their offsets (`crate::tier`).
    Tiered,
}

impl StorageMode {
    /// Parses a `storage.mode` value.
    pub fn parse(v: &str) -> Result<StorageMode, &'static str> {
        match v {
            "persistent" => Ok(StorageMode::Persistent),
            "memory" => Ok(StorageMode::Memory),
            "hybrid" => Ok(StorageMode::Hybrid),
            "tiered" => Ok(StorageMode::Tiered),
            _ => Err("one of persistent, hybrid, memory, tiered"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            StorageMode::Persistent => "persistent",
            StorageMode::Memory => "memory",
            StorageMode::Hybrid => "hybrid",
            StorageMode::Tiered => "tiered",
        }
    }
}

pub(crate) struct Topic {
    pub(crate) id: u32,
    pub(crate) name: Arc<str>,
    configs: RwLock<BTreeMap<String, String>>,
    partitions: RwLock<Vec<Option<Arc<PartitionLog>>>>,
}

impl Topic {
    pub(crate) fn partition_count(&self) -> u32 {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u32
    }

    /// The topic's explicit configs (defaults not included).
    pub(crate) fn configs(&self) -> BTreeMap<String, String> {
        self.configs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A config value, falling back to the default.
    pub(crate) fn config(&self, key: &str) -> Option<String> {
        if let Some(v) = self
            .configs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Some(v.clone());
        }
        default_config(key).map(str::to_string)
    }

    /// Whether the topic is served from an S3 prefix (`crate::source`): nothing is
    /// appended to it.
    pub(crate) fn read_only(&self) -> bool {
        self.config(crate::source::SOURCE).is_some()
    }

    /// `cleanup.policy` includes `compact`: older records of a key are removed
    /// (`compaction`).
    pub(crate) fn compacted(&self) -> bool {
        self.config("cleanup.policy")
            .is_some_and(|p| has_policy(&p, "compact"))
    }

    /// `cleanup.policy` includes `delete`: `retention.ms` and `retention.bytes` apply.
    pub(crate) fn deletes(&self) -> bool {
        self.config("cleanup.policy")
            .is_none_or(|p| has_policy(&p, "delete"))
    }

    /// The topic's storage mode (an unreadable stored value reads as persistent).
    pub(crate) fn mode(&self) -> StorageMode {
        self.config("storage.mode")
            .and_then(|v| StorageMode::parse(&v).ok())
            .unwrap_or(StorageMode::Persistent)
    }

    /// A stable 16-byte topic id derived from the numeric id.
    pub(crate) fn uuid(&self) -> [u8; 16] {
        let mut u = *b"edgecloudtopic\0\0";
        u[10..14].copy_from_slice(&self.id.to_be_bytes());
        u[14] = 0x5a;
        u
    }

    fn record(&self) -> TopicRecord {
        TopicRecord {
            id: self.id,
            name: self.name.to_string(),
            partitions: self.partition_count(),
            configs: self.configs(),
        }
    }
}

/// Checks a Kafka topic name: `[a-zA-Z0-9._-]{1,249}`, not `.` or `..`.
pub(crate) fn validate_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() || name.len() > 249 {
        return Err(TopicError::InvalidName("length must be 1..=249"));
    }
    if name == "." || name == ".." {
        return Err(TopicError::InvalidName("'.' and '..' are not allowed"));
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
    {
        return Err(TopicError::InvalidName("only [a-zA-Z0-9._-] are allowed"));
    }
    Ok(())
}

fn validate_config(key: &str, value: &str) -> Result<(), TopicError> {
    let bad = |reason: &str| TopicError::InvalidConfig {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    match key {
        crate::tier::LOCAL_BYTES => {
            let v: i64 = value.parse().map_err(|_| bad("not an integer"))?;
            if v < -2 {
                return Err(bad("must be -2 (storage.tiered.local_bytes) or more"));
            }
        }
        "retention.ms" | "retention.bytes" => {
            let v: i64 = value.parse().map_err(|_| bad("not an integer"))?;
            if v < -1 {
                return Err(bad("must be -1 or more"));
            }
        }
        "segment.bytes" | "max.message.bytes" | "min.insync.replicas" => {
            value.parse::<i64>().map_err(|_| bad("not an integer"))?;
        }
        "cleanup.policy" => {
            let mut parts = value.split(',').map(str::trim);
            if value.trim().is_empty() || !parts.all(|p| p == "delete" || p == "compact") {
                return Err(bad("must be delete, compact or compact,delete"));
            }
        }
        "delete.retention.ms" | "min.compaction.lag.ms" => {
            let v: i64 = value.parse().map_err(|_| bad("not an integer"))?;
            if v < 0 {
                return Err(bad("must be 0 or more"));
            }
        }
        "min.cleanable.dirty.ratio" => {
            let v: f64 = value.parse().map_err(|_| bad("not a number"))?;
            if !(0.0..=1.0).contains(&v) {
                return Err(bad("must be between 0 and 1"));
            }
        }
        "storage.mode" => {
            StorageMode::parse(value).map_err(bad)?;
        }
        crate::source::SOURCE => {
            crate::source::Spec::parse(value).map_err(bad)?;
        }
        crate::source::FORMAT => {
            crate::source::split::Format::parse(value).map_err(bad)?;
        }
        "compression.type" | "message.timestamp.type" => {}
        _ => return Err(bad("unknown topic config")),
    }
    Ok(())
}

/// A topic to create.
pub(crate) struct NewTopic {
    pub(crate) name: String,
    pub(crate) partitions: u32,
    pub(crate) configs: BTreeMap<String, String>,
}

pub(crate) struct Log {
    pub(crate) store: Arc<Store>,
    /// `storage.mode` of topics created without one.
    default_mode: StorageMode,
    /// Byte cap of a memory partition whose topic sets no `retention.bytes`.
    memory_partition_bytes: usize,
    /// Whether `storage.mode=tiered` is served (`storage.tiered.target` is set).
    tiered: bool,
    /// What all memory partitions hold together, and its limit.
    memory_budget: Arc<memory::Budget>,
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    next_id: AtomicU32,
    generation: AtomicU64,
    admin: tokio::sync::Mutex<()>,
    /// Orders compaction's rewrites against DeleteRecords: a rewrite written after a
    /// DeleteRecords never brings back a batch it deleted (`compaction`).
    pub(crate) rewrites: tokio::sync::Mutex<()>,
    /// Names of newly created topics, for views that index topics (MQTT). Additive: a
    /// send with no receiver is a no-op.
    created: tokio::sync::broadcast::Sender<Arc<str>>,
}

impl Log {
    pub(crate) fn open(store: Arc<Store>) -> Result<Log, storage::Error> {
        let records = store.load_topics()?;
        let mut map = HashMap::with_capacity(records.len());
        let mut next_id = 1u32;
        for r in records {
            next_id = next_id.max(r.id + 1);
            let t = Topic {
                id: r.id,
                name: Arc::from(r.name.as_str()),
                configs: RwLock::new(r.configs),
                partitions: RwLock::new(vec![None; r.partitions as usize]),
            };
            map.insert(t.name.clone(), Arc::new(t));
        }
        Ok(Log {
            store,
            default_mode: StorageMode::Persistent,
            memory_partition_bytes: 64 << 20,
            tiered: false,
            memory_budget: memory::Budget::new(1 << 30),
            topics: RwLock::new(map),
            next_id: AtomicU32::new(next_id),
            generation: AtomicU64::new(1),
            admin: tokio::sync::Mutex::new(()),
            rewrites: tokio::sync::Mutex::new(()),
            created: tokio::sync::broadcast::channel(4096).0,
        })
    }

    /// The mode of topics created without `storage.mode` (`storage.default_mode`).
    pub(crate) fn default_mode(&self) -> StorageMode {
        self.default_mode
    }

    /// Sets the mode of topics created without `storage.mode`, the byte cap of a memory
    /// partition and of all of them together (config `storage.default_mode`,
    /// `storage.memory_partition_bytes`, `storage.memory_total_bytes`).
    pub(crate) fn with_modes(
        mut self,
        default_mode: StorageMode,
        partition_bytes: usize,
        total_bytes: usize,
    ) -> Log {
        self.default_mode = default_mode;
        self.memory_partition_bytes = partition_bytes;
        self.memory_budget = memory::Budget::new(total_bytes);
        self
    }

    /// Serves `storage.mode=tiered` (a `storage.tiered.target` is configured).
    pub(crate) fn with_tiering(mut self, enabled: bool) -> Log {
        self.tiered = enabled;
        self
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Bumped on every create, delete or partition change; keys cached views.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn topic_count(&self) -> usize {
        self.topics.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// All topics, sorted by name.
    pub(crate) fn all(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<Arc<Topic>> = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The partition's log, loading it on first use.
    pub(crate) fn partition(
        &self,
        topic: &Topic,
        index: i32,
    ) -> Result<Arc<PartitionLog>, TopicError> {
        if index < 0 {
            return Err(TopicError::Unknown);
        }
        let i = index as usize;
        {
            let parts = topic.partitions.read().unwrap_or_else(|p| p.into_inner());
            match parts.get(i) {
                None => return Err(TopicError::Unknown),
                Some(Some(p)) => return Ok(p.clone()),
                Some(None) => {}
            }
        }
        let mut parts = topic.partitions.write().unwrap_or_else(|p| p.into_inner());
        let slot = parts.get_mut(i).ok_or(TopicError::Unknown)?;
        if let Some(p) = slot {
            return Ok(p.clone());
        }
        let memory = (topic.mode() == StorageMode::Memory)
            .then(|| (self.memory_cap(topic), self.memory_budget.clone()));
        let p = Arc::new(
            PartitionLog::load(&self.store, topic.id, index as u32, memory)?
                .hybrid(topic.mode() == StorageMode::Hybrid),
        );
        *slot = Some(p.clone());
        Ok(p)
    }

    /// Validates and creates topics in one durable metadata write. Returns one result per
    /// input, in order. `validate_only` checks without creating.
    pub(crate) async fn create(
        &self,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> Vec<Result<(), TopicError>> {
        let _admin = self.admin.lock().await;
        let mut results = Vec::with_capacity(topics.len());
        let mut set = WriteSet::default();
        let mut created = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in topics {
            let r = (|| {
                validate_name(&t.name)?;
                if t.partitions == 0 || t.partitions > 100_000 {
                    return Err(TopicError::InvalidPartitions(format!(
                        "{} is not in 1..=100000",
                        t.partitions
                    )));
                }
                self.check_configs(&t.configs)?;
                if self.get(&t.name).is_some() || !seen.insert(t.name.clone()) {
                    return Err(TopicError::Exists);
                }
                Ok(())
            })();
            if r.is_ok() && !validate_only {
                let id = self.next_id.fetch_add(1, Ordering::AcqRel);
                let mut configs = t.configs;
                if self.default_mode != StorageMode::Persistent {
                    // Stored with the topic: a later change of the default leaves it be.
                    configs
                        .entry("storage.mode".to_string())
                        .or_insert_with(|| self.default_mode.name().to_string());
                }
                let rec = TopicRecord {
                    id,
                    name: t.name.clone(),
                    partitions: t.partitions,
                    configs,
                };
                set.put_topic(&rec);
                created.push(rec);
            }
            results.push(r);
        }
        if created.is_empty() {
            return results;
        }
        if let Err(e) = self.store.write(set, true).await {
            return results
                .into_iter()
                .map(|r| r.and(Err(TopicError::Storage(e.clone()))))
                .collect();
        }
        let mut map = self.topics.write().unwrap_or_else(|p| p.into_inner());
        for r in created {
            let t = Topic {
                id: r.id,
                name: Arc::from(r.name.as_str()),
                configs: RwLock::new(r.configs),
                partitions: RwLock::new(vec![None; r.partitions as usize]),
            };
            let _ = self.created.send(t.name.clone());
            map.insert(t.name.clone(), Arc::new(t));
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        results
    }

    /// Deletes a topic: one metadata delete plus range deletes of its log and state.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), TopicError> {
        let _admin = self.admin.lock().await;
        let topic = self.get(name).ok_or(TopicError::Unknown)?;
        let mut set = WriteSet::default();
        set.delete_topic(&topic.record());
        self.store.write(set, true).await?;
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Checks a topic's whole config set: each value, then how they combine.
    fn check_configs(&self, configs: &BTreeMap<String, String>) -> Result<(), TopicError> {
        for (k, v) in configs {
            validate_config(k, v)?;
        }
        let mode = configs
            .get("storage.mode")
            .and_then(|m| StorageMode::parse(m).ok())
            .unwrap_or(self.default_mode);
        if mode == StorageMode::Tiered && !self.tiered {
            return Err(TopicError::InvalidConfig {
                key: "storage.mode".into(),
                reason: "tiered needs storage.tiered.target in the cloud config".into(),
            });
        }
        let compact = configs
            .get("cleanup.policy")
            .is_some_and(|p| has_policy(p, "compact"));
        if compact && matches!(mode, StorageMode::Memory | StorageMode::Tiered) {
            // Kafka refuses compaction with tiered storage too.
            return Err(TopicError::InvalidConfig {
                key: "cleanup.policy".into(),
                reason: format!(
                    "compact needs storage.mode persistent or hybrid, not {}",
                    mode.name()
                ),
            });
        }
        if compact && configs.contains_key(crate::source::SOURCE) {
            return Err(TopicError::InvalidConfig {
                key: "cleanup.policy".into(),
                reason: "an S3-backed topic is read-only: nothing to compact".into(),
            });
        }
        if configs.contains_key(crate::source::FORMAT)
            && !configs.contains_key(crate::source::SOURCE)
        {
            return Err(TopicError::InvalidConfig {
                key: crate::source::FORMAT.into(),
                reason: "needs the topic config source".into(),
            });
        }
        Ok(())
    }

    /// Changes a topic's configs (AlterConfigs, IncrementalAlterConfigs): `change` edits
    /// the explicit configs; the result is checked as at creation and stored durably
    /// before it applies. What fixes where a topic's batches are (`storage.mode`,
    /// `source`, `source.format`) cannot change: left out, it is kept; another value is
    /// INVALID_CONFIG.
    pub(crate) async fn alter_configs(
        &self,
        name: &str,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), TopicError>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let _admin = self.admin.lock().await;
        let topic = self.get(name).ok_or(TopicError::Unknown)?;
        let old = topic.configs();
        let mut new = old.clone();
        change(&mut new)?;
        for key in FIXED_AT_CREATION {
            match (old.get(key), new.get(key)) {
                (Some(o), None) => {
                    new.insert(key.to_string(), o.clone());
                }
                (o, Some(n))
                    if o.map(String::as_str).or(default_config(key)) != Some(n.as_str()) =>
                {
                    return Err(TopicError::InvalidConfig {
                        key: key.to_string(),
                        reason: "set at creation only".into(),
                    });
                }
                _ => {}
            }
        }
        self.check_configs(&new)?;
        if validate_only || new == old {
            return Ok(());
        }
        let mut rec = topic.record();
        rec.configs = new.clone();
        let mut set = WriteSet::default();
        set.put_topic(&rec);
        self.store.write(set, true).await?;
        *topic.configs.write().unwrap_or_else(|p| p.into_inner()) = new;
        if topic.mode() == StorageMode::Memory {
            let cap = self.memory_cap(&topic);
            for i in 0..topic.partition_count() {
                if let Some(p) = self.loaded_partition(&topic, i) {
                    p.set_memory_cap(cap);
                }
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// A memory partition's byte cap: the topic's `retention.bytes`, else
    /// `storage.memory_partition_bytes`.
    fn memory_cap(&self, topic: &Topic) -> usize {
        topic
            .config("retention.bytes")
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|b| *b >= 0)
            .map_or(self.memory_partition_bytes, |b| b as usize)
    }

    /// Raises a topic's partition count to `count`.
    pub(crate) async fn add_partitions(
        &self,
        name: &str,
        count: u32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let _admin = self.admin.lock().await;
        let topic = self.get(name).ok_or(TopicError::Unknown)?;
        let current = topic.partition_count();
        if count <= current || count > 100_000 {
            return Err(TopicError::InvalidPartitions(format!(
                "topic has {current} partitions; the new count must be larger (and at most 100000), got {count}"
            )));
        }
        if validate_only {
            return Ok(());
        }
        let mut rec = topic.record();
        rec.partitions = count;
        let mut set = WriteSet::default();
        set.put_topic(&rec);
        self.store.write(set, true).await?;
        topic
            .partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .resize(count as usize, None);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Receives the name of every topic created from now on (a lagging receiver must
    /// rescan [`Log::all`]).
    pub(crate) fn watch_created(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.created.subscribe()
    }

    /// Loaded partitions of a topic (for retention).
    pub(crate) fn loaded_partition(&self, topic: &Topic, index: u32) -> Option<Arc<PartitionLog>> {
        topic
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(index as usize)
            .cloned()
            .flatten()
    }
}
