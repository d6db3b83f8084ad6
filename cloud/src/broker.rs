//! The broker's shared state, handed to every API handler.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::config::Config;
use crate::groups::Coordinator;
use crate::log::Log;
use crate::source::Sources;
use crate::storage::{self, Store, WriteSet};
use crate::tier::Tiers;

pub(crate) const NODE_ID: i32 = 0;
const PID_BLOCK: u64 = 1000;

/// Where clients reach this broker.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) host: String,
    pub(crate) port: i32,
}

pub(crate) struct Broker {
    pub(crate) log: Arc<Log>,
    pub(crate) groups: Arc<Coordinator>,
    pub(crate) config: Config,
    pub(crate) node: Node,
    pub(crate) cluster_id: String,
    pids: tokio::sync::Mutex<(u64, u64)>,
    /// Encoded all-topics Metadata bodies: (log generation, version, body).
    pub(crate) metadata_cache: Mutex<Option<(u64, i16, Bytes)>>,
    pub(crate) metadata_build: tokio::sync::Mutex<()>,
    /// The MQTT view, told of produced records (retained messages set over Kafka).
    pub(crate) mqtt: std::sync::OnceLock<Arc<crate::mqtt::Hub>>,
    /// S3-backed topics (topic config `source`).
    pub(crate) sources: Arc<Sources>,
    /// Tiered partitions' uploaded segments (`storage.mode=tiered`).
    pub(crate) tiers: Arc<Tiers>,
    /// The `acl` rules (`None`: no access control); set by the start after `new`.
    pub(crate) acl: Option<Arc<crate::acl::Acl>>,
}

impl Broker {
    pub(crate) async fn new(
        store: Arc<Store>,
        log: Arc<Log>,
        groups: Arc<Coordinator>,
        config: Config,
        node: Node,
        sources: Arc<Sources>,
        tiers: Arc<Tiers>,
    ) -> Result<Broker, storage::Error> {
        let mut cluster = store.counter("cluster_id")?;
        if cluster == 0 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            cluster = nanos ^ ((std::process::id() as u64) << 32) | 1;
            let mut set = WriteSet::default();
            set.put_counter("cluster_id", cluster);
            store.write(set, true).await?;
        }
        let next_pid = store.counter("producer_id")?;

        Ok(Broker {
            log,
            groups,
            config,
            node,
            cluster_id: format!("edgecloud-{cluster:016x}"),
            pids: tokio::sync::Mutex::new((next_pid, next_pid)),
            metadata_cache: Mutex::new(None),
            metadata_build: tokio::sync::Mutex::new(()),
            mqtt: std::sync::OnceLock::new(),
            sources,
            tiers,
            acl: None,
        })
    }

    /// Allocates a producer id. Ids are reserved in durable blocks, so an id is never
    /// handed out twice, even across a crash.
    pub(crate) async fn next_producer_id(&self) -> Result<i64, storage::Error> {
        let mut g = self.pids.lock().await;
        if g.0 >= g.1 {
            let limit = g.1 + PID_BLOCK;
            let mut set = WriteSet::default();
            set.put_counter("producer_id", limit);
            self.log.store.write(set, true).await?;
            g.1 = limit;
        }
        let id = g.0;
        g.0 += 1;
        Ok(id as i64)
    }
}
