//! Prometheus metrics of the cloud, as text on `GET /metrics` (`metrics.listen`; the
//! responder is `common::metrics_http`, shared with the edge). Counters are bumped where
//! the work happens (one relaxed atomic add, no label lookup on a request path); the
//! gauges of the store (topics, partitions, bytes) are read when scraped.
//!
//! One set per process ([`get`]): the request paths need no handle passed down.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::log::Log;

/// Every cloud metric.
pub(crate) struct Metrics {
    registry: Registry,
    /// Per API key, the counter of `cloud_kafka_requests_total{api}` (advertised APIs).
    requests: Vec<Option<Counter>>,
    pub(crate) kafka_connections: Gauge,
    pub(crate) produce_bytes: Counter,
    pub(crate) fetch_bytes: Counter,
    pub(crate) mqtt_connections: Gauge,
    pub(crate) mqtt_received: Counter,
    pub(crate) mqtt_sent: Counter,
    pub(crate) retention_batches: Counter,
    pub(crate) compaction_records: Counter,
    pub(crate) tier_segments: Counter,
    pub(crate) tier_bytes: Counter,
    pub(crate) s3_gets: Counter,
    pub(crate) s3_get_bytes: Counter,
    topics: Gauge,
    partitions: Gauge,
    store_bytes: Gauge,
}

/// The process's metrics.
pub(crate) fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let kafka_requests = Family::<Vec<(String, String)>, Counter>::default();
        let mut requests = vec![None; 128];
        let apis = crate::api::SUPPORTED.iter().chain(crate::api::SASL_APIS);
        for (key, _, _) in apis {
            let label = vec![("api".to_string(), format!("{key:?}"))];
            if let Some(slot) = requests.get_mut(*key as usize) {
                *slot = Some(kafka_requests.get_or_create(&label).clone());
            }
        }
        let produce_bytes = counter(
            "cloud_kafka_produce_bytes",
            "Record batch bytes appended by Produce (retried duplicates not counted)",
        );
        let fetch_bytes = counter(
            "cloud_kafka_fetch_bytes",
            "Record batch bytes returned by Fetch",
        );
        let mqtt_received = counter(
            "cloud_mqtt_publishes_received",
            "MQTT publishes appended to the log",
        );
        let mqtt_sent = counter(
            "cloud_mqtt_messages_sent",
            "MQTT publishes sent to subscribers (shared subscriptions included)",
        );
        let retention_batches = counter(
            "cloud_retention_batches_deleted",
            "Batches deleted by retention.ms / retention.bytes",
        );
        let compaction_records = counter(
            "cloud_compaction_records_removed",
            "Records removed by compaction (superseded, or expired tombstones)",
        );
        let tier_segments = counter(
            "cloud_tier_segments_uploaded",
            "Segments of tiered topics uploaded to S3",
        );
        let tier_bytes = counter(
            "cloud_tier_bytes_uploaded",
            "Bytes of tiered segments uploaded to S3",
        );
        let s3_gets = counter(
            "cloud_s3_gets",
            "Objects read from S3 (S3-backed topics and tiered segments)",
        );
        let s3_get_bytes = counter("cloud_s3_get_bytes", "Bytes read from S3");
        registry.register(
            "cloud_kafka_requests",
            "Kafka requests decoded, by API",
            kafka_requests,
        );
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let kafka_connections = gauge("cloud_kafka_connections", "Open Kafka connections");
        let mqtt_connections = gauge(
            "cloud_mqtt_connections",
            "Open MQTT connections (TCP, TLS and WebSocket)",
        );
        let topics = gauge("cloud_topics", "Topics");
        let partitions = gauge("cloud_partitions", "Partitions of all topics");
        let store_bytes = gauge(
            "cloud_store_bytes",
            "Bytes of the store's data files (RocksDB SST files, all column families)",
        );
        Metrics {
            registry,
            requests,
            kafka_connections,
            produce_bytes,
            fetch_bytes,
            mqtt_connections,
            mqtt_received,
            mqtt_sent,
            retention_batches,
            compaction_records,
            tier_segments,
            tier_bytes,
            s3_gets,
            s3_get_bytes,
            topics,
            partitions,
            store_bytes,
        }
    }

    /// Counts one decoded Kafka request.
    pub(crate) fn request(&self, api: i16) {
        if let Some(Some(c)) = usize::try_from(api).ok().and_then(|i| self.requests.get(i)) {
            c.inc();
        }
    }

    /// The text exposition, with the store's gauges read now.
    fn render(&self, log: &Log) -> String {
        let all = log.all();
        self.topics.set(all.len() as i64);
        self.partitions
            .set(all.iter().map(|t| i64::from(t.partition_count())).sum());
        if let Some(b) = log.store.sst_bytes() {
            self.store_bytes.set(b as i64);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves the metrics on `listener` until the process ends.
pub(crate) async fn serve(listener: tokio::net::TcpListener, log: Arc<Log>) {
    common::metrics_http::serve(listener, Arc::new(move || get().render(&log))).await;
}

/// Counts an open connection of one kind until dropped.
pub(crate) struct Open(&'static Gauge);

impl Open {
    pub(crate) fn kafka() -> Open {
        let g = &get().kafka_connections;
        g.inc();
        Open(g)
    }

    pub(crate) fn mqtt() -> Open {
        let g = &get().mqtt_connections;
        g.inc();
        Open(g)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}
