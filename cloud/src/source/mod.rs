//! S3-backed topics: a topic created with the config `source=s3://bucket/prefix` is
//! served over Kafka Fetch from the objects under that prefix (design brief section 3).
//!
//! 1. At creation the prefix must be listable (CreateTopics answers INVALID_CONFIG
//!    otherwise). An indexer task (`indexer.rs`) then lists it in key order and gives each
//!    object not seen before the next offsets of partition `n % partitions` (`n` counts
//!    objects in the order found): one record per object, per line or per tar member
//!    (`source.format`, [`split`]). Entries are stored durably before they are visible
//!    ([`index`]), so an offset names the same record across restarts; the prefix is
//!    listed again every `s3.refresh_ms` and new objects are appended.
//! 2. A fetch (`read.rs`) builds record batches from the objects in the cache
//!    ([`cache`]): memory first, then the local-disk tier, then a GET from S3 in the
//!    background that wakes the waiting fetch. Objects ahead of each partition's readers
//!    are loaded ahead of time: as many bytes as the partition was read at in the last
//!    `s3.cache.prefetch_ms`.
//! 3. The topic is read-only: Produce answers INVALID_TOPIC_EXCEPTION.
//!
//! Records: key = the object key (`object`), the member path (`tar`) or null (`line`);
//! value = the object, line or member; header `s3.key` = the object key; timestamp = the
//! object's Last-Modified. An object deleted from S3 that is not cached is skipped (an
//! offset gap, as after compaction).

pub mod cache;
pub mod index;
mod indexer;
mod read;
pub mod split;
mod topic;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use serde::Deserialize;

use crate::log::Topic;
use crate::storage::Store;
pub(crate) use read::Owner;
pub(crate) use topic::SourceTopic;

/// Topic config naming the source.
pub const SOURCE: &str = "source";
/// Topic config naming how objects become records.
pub const FORMAT: &str = "source.format";

/// Cloud config `s3`: where S3-backed topics read from and how they are cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// S3 endpoint URL (MinIO, moto, ...); `None` is AWS for the region.
    pub endpoint: Option<String>,
    pub region: String,
    /// `None`: `AWS_ACCESS_KEY_ID` (and the rest of the AWS_* variables) from the
    /// environment.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow an `http://` endpoint.
    pub allow_http: bool,
    /// How often each source prefix is listed again for new objects (0: only at creation
    /// and at start).
    pub refresh_ms: u64,
    /// Larger objects are not indexed (logged).
    pub max_object_bytes: u64,
    /// `s3://bucket[/prefix]` values a topic's `source` must lie under; empty: any.
    /// Creating a topic reads with the cloud's credentials, so any client allowed to
    /// create topics can read whatever they reach unless this narrows it.
    pub allowed_sources: Vec<String>,
    pub cache: S3CacheConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3CacheConfig {
    pub memory_bytes: u64,
    /// 0: no disk tier.
    pub disk_bytes: u64,
    /// `None`: `<data_dir>/s3-cache`.
    pub dir: Option<PathBuf>,
    /// Objects ahead of readers are loaded for this long at their measured rate.
    pub prefetch_ms: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            refresh_ms: 60_000,
            max_object_bytes: 256 << 20,
            allowed_sources: Vec::new(),
            cache: S3CacheConfig::default(),
        }
    }
}

impl Default for S3CacheConfig {
    fn default() -> Self {
        S3CacheConfig {
            memory_bytes: 256 << 20,
            disk_bytes: 10 << 30,
            dir: None,
            prefetch_ms: 2_000,
        }
    }
}

impl S3CacheConfig {
    /// The disk tier's directory: `dir`, else `<data_dir>/s3-cache`.
    pub fn dir_in(&self, data_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| data_dir.join("s3-cache"))
    }
}

impl S3Config {
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.region.is_empty() {
            return Err(("s3.region", "must not be empty".into()));
        }
        if self.max_object_bytes == 0 || self.max_object_bytes > u64::from(u32::MAX) {
            return Err((
                "s3.max_object_bytes",
                "must be between 1 and 4294967295".into(),
            ));
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(("s3.endpoint", "must start with http:// or https://".into()));
            }
            if e.starts_with("http://") && !self.allow_http {
                return Err((
                    "s3.endpoint",
                    "is http:// but s3.allow_http is false".into(),
                ));
            }
        }
        if let Some((i, why)) = self
            .allowed_sources
            .iter()
            .enumerate()
            .find_map(|(i, s)| Spec::parse(s).err().map(|e| (i, e)))
        {
            return Err(("s3.allowed_sources", format!("entry {i}: {why}")));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err((
                "s3.access_key_id",
                "set both s3.access_key_id and s3.secret_access_key, or neither".into(),
            ));
        }
        Ok(())
    }
}

/// A parsed `source`: `s3://bucket[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub bucket: String,
    /// Without leading or trailing `/`; empty: the whole bucket.
    pub prefix: String,
}

impl Spec {
    /// Whether this source lies under `other` (same bucket; prefix equal or below).
    pub fn within(&self, other: &Spec) -> bool {
        self.bucket == other.bucket
            && (other.prefix.is_empty()
                || self.prefix == other.prefix
                || self
                    .prefix
                    .strip_prefix(other.prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    }

    pub fn parse(v: &str) -> Result<Spec, &'static str> {
        let rest = v
            .strip_prefix("s3://")
            .ok_or("must be s3://bucket or s3://bucket/prefix")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("names no bucket (s3://bucket/prefix)");
        }
        if !bucket
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        {
            return Err("bucket names are [a-z0-9.-]");
        }
        Ok(Spec {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    fn path(&self) -> Option<object_store::path::Path> {
        (!self.prefix.is_empty()).then(|| object_store::path::Path::from(self.prefix.as_str()))
    }
}

/// Why a source could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Spec(&'static str),
    #[error("s3: {0}")]
    S3(#[from] object_store::Error),
    #[error("listing timed out")]
    Timeout,
    #[error("{0}")]
    Listing(String),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::Error),
}

/// Every S3-backed topic, their S3 clients and the shared cache.
pub(crate) struct Sources {
    config: S3Config,
    store: Arc<Store>,
    clients: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    topics: RwLock<HashMap<u32, Arc<SourceTopic>>>,
    cache: Mutex<cache::Cache>,
    /// Objects loaded but not admitted to the cache, kept for the fetch that waits for
    /// them (bounded, oldest dropped first).
    staged: Mutex<Vec<(cache::ObjId, Arc<cache::Loaded>)>>,
    loading: Mutex<HashSet<cache::ObjId>>,
    failed: Mutex<HashMap<cache::ObjId, Instant>>,
    gets: tokio::sync::Semaphore,
    /// The runtime loads run on (the one `new` ran on): readers on other runtimes (the
    /// MQTT threads' own) start loads too, and S3 connections stay on one runtime.
    runtime: Option<tokio::runtime::Handle>,
}

/// Bytes of loaded objects kept outside the cache for the fetches waiting for them.
const STAGED_BYTES: usize = 64 << 20;
/// Concurrent GETs to S3.
const MAX_GETS: usize = 8;
/// A failed GET is retried after this long.
const RETRY_AFTER: Duration = Duration::from_secs(2);

impl Sources {
    pub(crate) fn new(
        store: Arc<Store>,
        config: S3Config,
        data_dir: &Path,
    ) -> std::io::Result<Sources> {
        let dir = config.cache.dir_in(data_dir);
        let cache = cache::Cache::new(
            usize::try_from(config.cache.memory_bytes).unwrap_or(usize::MAX),
            usize::try_from(config.cache.disk_bytes).unwrap_or(usize::MAX),
            dir,
        )?;
        Ok(Sources {
            config,
            store,
            clients: Mutex::new(HashMap::new()),
            topics: RwLock::new(HashMap::new()),
            cache: Mutex::new(cache),
            staged: Mutex::new(Vec::new()),
            loading: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashMap::new()),
            gets: tokio::sync::Semaphore::new(MAX_GETS),
            runtime: tokio::runtime::Handle::try_current().ok(),
        })
    }

    pub(crate) fn client(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, Error> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(bucket) {
            return Ok(c.clone());
        }
        let c = &self.config;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&c.region)
            .with_allow_http(c.allow_http);
        if let Some(e) = &c.endpoint {
            b = b.with_endpoint(e);
        }
        if let (Some(k), Some(s)) = (&c.access_key_id, &c.secret_access_key) {
            b = b.with_access_key_id(k).with_secret_access_key(s);
        }
        let store: Arc<dyn ObjectStore> = Arc::new(b.build()?);
        clients.insert(bucket.to_string(), store.clone());
        Ok(store)
    }

    /// Uses `client` for `bucket` (tests: object_store's in-memory store).
    #[cfg(test)]
    pub(crate) fn set_client(&self, bucket: &str, client: Arc<dyn ObjectStore>) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bucket.to_string(), client);
    }

    /// Checks that `source` can be listed (CreateTopics, before the topic exists).
    pub(crate) async fn probe(&self, source: &str) -> Result<(), Error> {
        use futures_util::StreamExt;
        let spec = Spec::parse(source).map_err(Error::Spec)?;
        let allowed = &self.config.allowed_sources;
        if !allowed.is_empty()
            && !allowed
                .iter()
                .filter_map(|a| Spec::parse(a).ok())
                .any(|a| spec.within(&a))
        {
            return Err(Error::Spec("not under any of s3.allowed_sources"));
        }
        let client = self.client(&spec.bucket)?;
        let prefix = spec.path();
        let mut list = client.list(prefix.as_ref());
        match tokio::time::timeout(Duration::from_secs(10), list.next()).await {
            Err(_) => Err(Error::Timeout),
            Ok(Some(Err(e))) => Err(Error::Listing(short(&e.to_string()))),
            Ok(_) => Ok(()),
        }
    }

    /// Starts serving `topic` if it has a source (at start and after CreateTopics).
    pub(crate) fn open(self: &Arc<Self>, topic: &Arc<Topic>) -> Result<(), Error> {
        let Some(source) = topic.config(SOURCE) else {
            return Ok(());
        };
        let spec = Spec::parse(&source).map_err(Error::Spec)?;
        let format =
            split::Format::parse(&topic.config(FORMAT).unwrap_or_else(|| "object".to_string()))
                .map_err(Error::Spec)?;
        let entries = self.store.source_entries(topic.id)?;
        let st = Arc::new(SourceTopic::new(topic.clone(), spec, format, entries));
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.id, st.clone());
        tokio::spawn(indexer::run(self.clone(), st));
        Ok(())
    }

    /// Stops serving a deleted topic and drops its cached objects.
    pub(crate) fn close(&self, topic_id: u32) {
        let st = self
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&topic_id);
        if let Some(st) = st {
            st.stop();
        }
        let files = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(topic_id);
        for f in files {
            let _ = std::fs::remove_file(f);
        }
    }

    /// The source state of a topic, if it is S3-backed.
    pub(crate) fn get(&self, topic_id: u32) -> Option<Arc<SourceTopic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&topic_id)
            .cloned()
    }
}

/// An S3 error for a client: the error body's XML dropped, its code kept.
fn short(e: &str) -> String {
    let Some(at) = e.find("<?xml") else {
        return e.to_string();
    };
    let code = e[at..]
        .split_once("<Code>")
        .and_then(|(_, r)| r.split_once("</Code>"))
        .map(|(c, _)| c);
    let head = e[..at].trim_end().trim_end_matches(':');
    match code {
        Some(c) => format!("{head}: {c}"),
        None => head.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            Spec::parse("s3://b/x/y/"),
            Ok(Spec {
                bucket: "b".into(),
                prefix: "x/y".into()
            })
        );
        assert_eq!(Spec::parse("s3://b").map(|s| s.prefix), Ok(String::new()));
        assert!(Spec::parse("http://b/x").is_err());
        assert!(Spec::parse("s3:///x").is_err());
        assert!(Spec::parse("s3://Bad_Bucket/x").is_err());
    }

    #[test]
    fn a_source_is_within_a_prefix_at_path_boundaries() {
        let s = |v: &str| Spec::parse(v).unwrap();
        assert!(s("s3://b/data/train").within(&s("s3://b/data")));
        assert!(s("s3://b/data").within(&s("s3://b/data/")));
        assert!(s("s3://b/anything").within(&s("s3://b")));
        assert!(
            !s("s3://b/data2").within(&s("s3://b/data")),
            "not a path boundary"
        );
        assert!(!s("s3://b/data").within(&s("s3://b/data/train")));
        assert!(!s("s3://c/data").within(&s("s3://b/data")));
    }

    #[tokio::test]
    async fn sources_outside_the_allowed_ones_are_refused_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open(&dir.path().join("s"), crate::storage::SyncPolicy::Group).unwrap(),
        );
        let config = S3Config {
            allowed_sources: vec!["s3://datasets/public".into()],
            cache: S3CacheConfig {
                disk_bytes: 0,
                ..Default::default()
            },
            ..Default::default()
        };
        let sources = Sources::new(store, config, dir.path()).unwrap();
        // No client for the bucket exists (nothing reachable): refused before a request.
        let e = sources.probe("s3://secrets/keys").await.unwrap_err();
        assert!(e.to_string().contains("s3.allowed_sources"), "{e}");
        let e = sources.probe("s3://datasets/public2").await.unwrap_err();
        assert!(e.to_string().contains("s3.allowed_sources"), "{e}");
        assert!(sources.clients.lock().unwrap().is_empty());
    }

    #[test]
    fn s3_errors_lose_their_xml_and_keep_the_code() {
        let e = "GET failed - 404 Not Found: <?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>m</Message></Error>";
        assert_eq!(short(e), "GET failed - 404 Not Found: NoSuchBucket");
        assert_eq!(short("plain"), "plain");
    }
}
