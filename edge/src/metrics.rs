//! Prometheus metrics (prometheus-client; rumqttd's `metrics` 0.22 would clash with a
//! `metrics` 0.24 recorder) served as text on `GET /metrics` by a minimal HTTP responder
//! (`common::metrics_http`, shared with the cloud).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::buffer::{Buffer, DROP_REASONS};

/// All edge metrics.
pub struct Metrics {
    registry: Registry,
    ingest_records: Counter,
    ingest_bytes: Counter,
    /// Records acknowledged by the cloud.
    pub uplink_records: Counter,
    /// Bytes (record values) acknowledged by the cloud.
    pub uplink_bytes: Counter,
    /// Produce batch bytes (as sent: after compression) acknowledged by the cloud.
    pub uplink_wire_bytes: Counter,
    /// Produce batches (one per topic per request) acknowledged by the cloud.
    pub uplink_batches: Counter,
    /// 1 when the uplink is connected.
    pub uplink_up: Gauge,
    /// Uplink reconnect attempts.
    pub reconnects: Counter,
    /// Produce errors by Kafka error code.
    pub produce_errors: Family<Vec<(String, String)>, Counter>,
    backlog_records: Gauge,
    backlog_bytes: Gauge,
    oldest_age_ms: Gauge,
    disk_bytes: Gauge,
    dropped: Family<Vec<(String, String)>, Gauge>,
    corrupt: Gauge,
    index_rebuilt: Gauge,
    commits: Gauge,
    direct_files: Gauge,
    /// 1 when the downlink is subscribed at its broker.
    pub downlink_up: Gauge,
    /// Downlink reconnect attempts.
    pub downlink_reconnects: Counter,
    /// Downlink messages published to the local broker.
    pub downlink_messages: Counter,
    /// Downlink messages dropped because this edge had sent them up (`edge.id` is ours).
    pub downlink_looped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("edge");
        let m = Metrics {
            registry: Registry::default(),
            ingest_records: Counter::default(),
            ingest_bytes: Counter::default(),
            uplink_records: Counter::default(),
            uplink_bytes: Counter::default(),
            uplink_wire_bytes: Counter::default(),
            uplink_batches: Counter::default(),
            uplink_up: Gauge::default(),
            reconnects: Counter::default(),
            produce_errors: Family::default(),
            backlog_records: Gauge::default(),
            backlog_bytes: Gauge::default(),
            oldest_age_ms: Gauge::default(),
            disk_bytes: Gauge::default(),
            dropped: Family::default(),
            corrupt: Gauge::default(),
            index_rebuilt: Gauge::default(),
            commits: Gauge::default(),
            direct_files: Gauge::default(),
            downlink_up: Gauge::default(),
            downlink_reconnects: Counter::default(),
            downlink_messages: Counter::default(),
            downlink_looped: Counter::default(),
        };
        let r = &mut registry;
        r.register(
            "ingest_records",
            "MQTT publishes buffered for the uplink",
            m.ingest_records.clone(),
        );
        r.register(
            "ingest_payload_bytes",
            "Payload bytes buffered for the uplink",
            m.ingest_bytes.clone(),
        );
        r.register(
            "uplink_records",
            "Records acknowledged by the cloud",
            m.uplink_records.clone(),
        );
        r.register(
            "uplink_payload_bytes",
            "Payload bytes acknowledged by the cloud",
            m.uplink_bytes.clone(),
        );
        r.register(
            "uplink_wire_bytes",
            "Produce batch bytes (compressed, as sent) acknowledged by the cloud",
            m.uplink_wire_bytes.clone(),
        );
        r.register(
            "uplink_batches",
            "Produce batches (one per topic and request) acknowledged by the cloud",
            m.uplink_batches.clone(),
        );
        r.register(
            "uplink_up",
            "1 when connected to the cloud",
            m.uplink_up.clone(),
        );
        r.register(
            "uplink_reconnects",
            "Uplink reconnect attempts",
            m.reconnects.clone(),
        );
        r.register(
            "uplink_produce_errors",
            "Topics the cluster refused, by Kafka error code (Produce or Metadata)",
            m.produce_errors.clone(),
        );
        r.register(
            "downlink_up",
            "1 when the downlink is subscribed at its broker",
            m.downlink_up.clone(),
        );
        r.register(
            "downlink_reconnects",
            "Downlink reconnect attempts",
            m.downlink_reconnects.clone(),
        );
        r.register(
            "downlink_messages",
            "Downlink messages published to the local MQTT broker",
            m.downlink_messages.clone(),
        );
        r.register(
            "downlink_looped",
            "Downlink messages dropped because this edge sent them up (edge.id is its own)",
            m.downlink_looped.clone(),
        );
        r.register(
            "backlog_records",
            "Records buffered, not yet acknowledged",
            m.backlog_records.clone(),
        );
        r.register(
            "backlog_bytes",
            "Bytes counted against the buffer quota",
            m.backlog_bytes.clone(),
        );
        r.register(
            "backlog_oldest_age_ms",
            "Age of the oldest buffered record",
            m.oldest_age_ms.clone(),
        );
        r.register(
            "buffer_disk_bytes",
            "Bytes sled uses on disk",
            m.disk_bytes.clone(),
        );
        r.register(
            "buffer_dropped_records",
            "Records dropped, by reason: the quota policy (drop_oldest, drop_newest), larger \
             than the quota (too_large), too large for the cloud (too_large_for_cloud)",
            m.dropped.clone(),
        );
        r.register(
            "buffer_corrupt_skipped",
            "Corrupt records or batches skipped",
            m.corrupt.clone(),
        );
        r.register(
            "buffer_index_rebuilt",
            "1 when this start found the buffer's sled files damaged, set them aside and \
             rebuilt the index from the batch files",
            m.index_rebuilt.clone(),
        );
        r.register(
            "buffer_group_commits",
            "Group commits (fsyncs)",
            m.commits.clone(),
        );
        r.register(
            "buffer_direct_files",
            "Batch files of large records written with O_DIRECT (buffer.direct_io)",
            m.direct_files.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts `records` buffered publishes of `payload_bytes` in all.
    pub fn ingested(&self, records: u64, payload_bytes: u64) {
        self.ingest_records.inc_by(records);
        self.ingest_bytes.inc_by(payload_bytes);
    }

    /// Refreshes buffer gauges and renders the text exposition.
    pub fn render(&self, buffer: &Buffer) -> String {
        let snap = buffer.snapshot();
        let stats = buffer.stats();
        self.backlog_records.set(snap.records as i64);
        self.backlog_bytes.set(snap.bytes as i64);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.oldest_age_ms
            .set(snap.oldest_recv_ms.map_or(0, |t| (now - t).max(0)));
        self.disk_bytes.set(buffer.disk_bytes() as i64);
        for (i, reason) in DROP_REASONS.iter().enumerate() {
            self.dropped
                .get_or_create(&vec![("reason".to_owned(), (*reason).to_owned())])
                .set(stats.dropped[i].load(Ordering::Relaxed) as i64);
        }
        self.corrupt
            .set(stats.corrupt.load(Ordering::Relaxed) as i64);
        self.index_rebuilt
            .set(stats.index_rebuilt.load(Ordering::Relaxed) as i64);
        self.commits
            .set(stats.commits.load(Ordering::Relaxed) as i64);
        self.direct_files
            .set(stats.direct_files.load(Ordering::Relaxed) as i64);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` on an already bound listener.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, buffer: Arc<Buffer>) {
    common::metrics_http::serve(listener, Arc::new(move || metrics.render(&buffer))).await;
}
