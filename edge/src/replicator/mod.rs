//! The replicator: buffer -> cloud over Kafka Produce (idempotent, zstd, pipelined).
//!
//! Exactly once, in per-topic order, across uplink cuts and kills of either side:
//! - the producer id/epoch is obtained once and persisted in the buffer, so a restarted
//!   edge keeps its identity and sequences;
//! - every Produce batch gets its producer sequence and a descriptor persisted (flushed)
//!   *before* it is sent, and is resent byte-identical until acknowledged, so the broker's
//!   idempotence turns a replay into `DUPLICATE_SEQUENCE_NUMBER` or a no-op success;
//! - records are released from the buffer only after the acknowledgement, and the
//!   acknowledged watermark skips records whose release did not reach disk;
//! - each topic is produced to partition 0 (routed to its leader from Metadata); one
//!   Produce request per leader carries the oldest unsent batch of every topic, at most
//!   `max_in_flight` requests on the wire; any error ends the session, and the next session
//!   resends every unacknowledged batch in order after an exponential backoff with jitter.
//!
//! Drain rate: a broker answers one connection's requests one at a time, each after its
//! own fsync (our cloud and Kafka alike), so the rate is request size / request latency.
//! The replicator therefore fills requests across topics, prepares the next request while
//! the broker works on the previous ones, and never waits for an unlink (the buffer's
//! reaper deletes drained batches). The replicator's thread never waits for a cut
//! (`cuts`): a cut's batches are encoded and compressed on the encoder thread and its
//! descriptors fsynced on the fsync thread while the replicator reads the next records,
//! sends finished batches and takes acknowledgements; two cuts are prepared at once, so
//! the encoder does not idle between them. It waits only when nothing can move: for a
//! response, a cut, or (idle) the next group commit. Memory is bounded by
//! `PIPELINE_BYTES`.
//!
//! Drain policy (`cloud.drain`): `backlog_first` reads the buffer with one cursor in
//! arrival order. `live_first`: when a session starts with a backlog, the buffer marks a
//! boundary sequence (persisted; batch files never straddle it). A live cursor reads
//! from the boundary, a backlog cursor below it; live records are read and batched first.
//! Each stream has its own acknowledged watermark per partition, so a restart skips
//! exactly the acknowledged records of each. When the backlog cursor reaches the boundary
//! and every backlog batch is acknowledged, the boundary is dropped.

mod cuts;
mod encode;
mod fill;
mod send;
pub mod state;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::record_batch::{Codec, Compressor, Writer};
use common::kafka::{
    self, codes, Connection, Metadata, ProducePartition, ProducerState, ResponseFuture,
};
use kafka_protocol::messages::ProduceResponse;

use crate::backoff::Backoff;
use crate::buffer::uplink::UplinkWrites;
use crate::buffer::{Buffer, Held, ReadBatch, Record};
use crate::config::{CloudConfig, CompressionName, DrainPolicy};
use crate::metrics::Metrics;
use state::{OutBatch, Placed, State};

/// Errors ending an uplink session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka client failure.
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
    /// Buffer failure.
    #[error(transparent)]
    Buffer(#[from] crate::buffer::Error),
    /// The broker rejected a batch.
    #[error("topic {topic}: produce error code {code}")]
    Rejected {
        /// Kafka topic.
        topic: String,
        /// Kafka error code.
        code: i16,
    },
    /// No leader known for a topic.
    #[error("topic {0}: no leader")]
    NoLeader(String),
    /// A produce did not complete in time.
    #[error("produce timed out")]
    Timeout,
}

/// Most bytes the replicator holds in memory: records read but not yet in a batch or cut
/// but not yet encoded (their record bytes), plus encoded batches not yet acknowledged
/// (their encoded bytes: a batch's records are dropped once it is encoded, and its
/// encoded bytes are all a resend needs). Bounds the edge's RSS during a drain whatever
/// the backlog. Session 13 (the bound counted encoded batches at their record bytes
/// before, about twice their zstd size): 1 GB drains, 4 alternating pairs, 131-147 ->
/// 148-158 MB/s, peak RSS 27.5-29.1 vs 27.6-29.3 MB in those pairs; with the session's
/// other changes fast drains peak at 29.1-31.7 MB, and a 2 MiB bound took only about
/// 0.4 MB off that. Earlier: with 2 MiB only one request could be on the wire while
/// the next was cut (a request is about 1 MiB of records). Measured (300 MB drain, 8
/// topics, old and new edge alternating, session 4): 2 MiB 64-67 MB/s and 23 MB peak RSS,
/// 4 MiB 69-91 MB/s and 26-27 MB, 6 MiB 83-96 MB/s and 28 MB. A 1 GB drain peaks higher:
/// 4 MiB reached 31.8-34.1 MB (over the 32 MB goal), 3 MiB 27.0-29.3 MB in five runs
/// (2 MiB: 25.5-27.9). Session 6 (cuts prepared without blocking the replicator, one
/// more thread allocating): 1 GB drains, old / 3 MiB / 2.5 MiB alternating on a loaded
/// machine, 27.9-29.8 / 28.3-30.9 (once 33.6) / 28.3-29.0 MB peak RSS at median 34.6 /
/// 51.3 / 48.8 MB/s: 2.5 MiB keeps the margin under 32 MB.
const PIPELINE_BYTES: usize = 5 << 19;

/// A new Produce request is sent while others are in flight only once this many record
/// bytes are ready for it: a broker answers a connection's requests one at a time (Kafka
/// and our cloud alike, each after its own fsync), so the drain rate is request size /
/// request latency, and a few large requests beat many small ones.
const REQUEST_TARGET_BYTES: usize = 1 << 20;

/// Largest Produce request (batches as encoded), well under brokers' request limits.
const REQUEST_MAX_BYTES: usize = 16 << 20;

/// Whether `rec` alone makes a RecordBatch within `cloud.max_message_bytes`, encoded
/// exactly as the encoder will (only asked of records whose bound says it might not).
fn fits_alone(
    rec: &Record,
    edge_id: &str,
    cfg: &CloudConfig,
    producer: ProducerState,
    codec: Codec,
) -> bool {
    let mut w = Writer::default();
    state::push_record(&mut w, rec, edge_id);
    let mut zstd = Compressor::with_level(cfg.compression_level);
    w.finish(producer, 0, codec, &mut zstd)
        .is_ok_and(|b| b.len() <= cfg.max_message_bytes)
}

/// Token bucket for the optional bandwidth cap. The burst is a tenth of a second, so even
/// a short drain after an idle period stays close to the cap (a one-second burst measured
/// 1.15 x the cap over a five-second drain).
struct Pacer {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    async fn take(&mut self, bytes: usize) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.rate / 10.0);
        self.last = now;
        self.tokens -= bytes as f64;
        if self.tokens < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-self.tokens / self.rate)).await;
        }
    }
}

/// The replicator task.
pub struct Replicator {
    buffer: Arc<Buffer>,
    cfg: CloudConfig,
    metrics: Arc<Metrics>,
    state: State,
    /// Last batch key read (the backlog cursor during a live-first drain).
    cursor: Option<u64>,
    /// Last batch key read by the live cursor of a live-first drain.
    live_cursor: Option<u64>,
    /// Boundary of the live-first drain in progress.
    live_from: Option<u64>,
    producer: Option<ProducerState>,
    backoff: Backoff,
    /// Consecutive sequence/producer rejections of the same batch.
    fenced: u32,
    pacer: Option<Pacer>,
    cuts: cuts::Cuts,
    topic_names: TopicNames,
    /// Stamped on every record (`edge.id`).
    edge_id: String,
}

/// Rejections after which the producer identity is renewed: the broker lost or expired
/// our producer state (e.g. Kafka's `producer.id.expiration.ms` after a long outage, or a
/// wiped cloud). Renewing re-sends the unacknowledged batches under a new producer id, so
/// records the broker did store may be duplicated; it is logged as an error.
const FENCED_LIMIT: u32 = 3;

/// A Produce request on the wire: (topic, base sequence) of each batch in it, the
/// response, and when it was sent.
type OnWire = (Vec<(String, i32)>, ResponseFuture<ProduceResponse>, Instant);

struct Session {
    connector: kafka::Connector,
    conns: HashMap<String, Arc<Connection>>,
    bootstrap: Arc<Connection>,
    wire: VecDeque<OnWire>,
}

impl Replicator {
    /// Prepares the replicator from the buffer's persisted uplink state.
    pub fn new(
        buffer: Arc<Buffer>,
        cfg: CloudConfig,
        edge_id: String,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let mut state = State::default();
        let descs = buffer.inflight()?;
        if let Some(max) = descs.iter().flat_map(|d| d.seqs.iter()).max() {
            buffer.protect_through(*max);
        }
        state.restore(descs);
        let cfg_rate = cfg.max_bytes_per_sec;
        let level = cfg.compression_level;
        let backoff = Backoff::new(cfg.backoff_initial_ms, cfg.backoff_max_ms);
        let live_from = buffer.live_from();
        Ok(Replicator {
            producer: buffer.producer()?,
            buffer,
            cfg,
            metrics,
            state,
            cursor: None,
            live_cursor: None,
            live_from,
            backoff,
            fenced: 0,
            pacer: (cfg_rate > 0).then(|| Pacer {
                rate: cfg_rate as f64,
                tokens: 0.0,
                last: Instant::now(),
            }),
            cuts: cuts::Cuts::new(&edge_id, level),
            topic_names: TopicNames::default(),
            edge_id,
        })
    }

    /// Runs forever: sessions with backoff between them.
    pub async fn run(mut self) {
        loop {
            let acked_before = self.metrics.uplink_records.get();
            let err = self.session().await;
            self.metrics.uplink_up.set(0);
            self.settle_cuts().await;
            match &err {
                Error::Rejected { code, .. }
                    if matches!(
                        *code,
                        codes::OUT_OF_ORDER_SEQUENCE_NUMBER
                            | codes::UNKNOWN_PRODUCER_ID
                            | codes::INVALID_PRODUCER_EPOCH
                    ) =>
                {
                    self.fenced += 1
                }
                _ => self.fenced = 0,
            }
            for t in self.state.topics.values_mut() {
                t.leader = None;
                for b in &mut t.batches {
                    b.sent = false;
                }
            }
            if self.metrics.uplink_records.get() > acked_before {
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay();
            tracing::warn!(cause = %err, retry_ms = delay.as_millis() as u64, "uplink session ended");
            self.metrics.reconnects.inc();
            tokio::time::sleep(delay).await;
        }
    }

    async fn session(&mut self) -> Error {
        match self.session_inner().await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn session_inner(&mut self) -> Result<std::convert::Infallible, Error> {
        // TLS files are re-read per session, so rotated certificates are picked up.
        let connector = (self.cfg.connector())
            .map_err(|(key, why)| kafka::Error::Tls(format!("{key}: {why}")))?;
        let bootstrap = Arc::new(connector.connect(&self.cfg.bootstrap).await?);
        let producer = match self.producer {
            Some(_) if self.fenced >= FENCED_LIMIT => {
                let p = self.bounded(bootstrap.init_producer_id()).await?;
                self.renew_producer(p)?;
                p
            }
            Some(p) => p,
            None => {
                let p = self.bounded(bootstrap.init_producer_id()).await?;
                self.buffer.set_producer(p)?;
                self.producer = Some(p);
                p
            }
        };
        self.metrics.uplink_up.set(1);
        tracing::info!(bootstrap = %self.cfg.bootstrap, producer_id = producer.producer_id, "uplink connected");
        let mut s = Session {
            connector,
            conns: HashMap::new(),
            bootstrap,
            wire: VecDeque::new(),
        };
        self.start_live_if_backlog()?;
        let notify = self.buffer.on_commit();
        let response_limit = Duration::from_millis(self.cfg.request_timeout_ms + 5_000);
        let linger = Duration::from_millis(self.cfg.linger_ms);
        loop {
            let caught_up = self.fill()?;
            let mut progress = self.finish_cuts()?;
            if self.cuts.len() < cuts::MAX_PENDING {
                progress |= self.start_cut(producer)? > 0;
            }
            self.send(&mut s, caught_up).await?;
            // Take every response that has already arrived.
            while let Some((_, fut, _)) = s.wire.front_mut() {
                let Some(resp) = fut.try_take() else {
                    break;
                };
                if let Some((batches, _, _)) = s.wire.pop_front() {
                    self.complete(&batches, &resp?)?;
                }
                progress = true;
            }
            if progress {
                // Prepare the next request while the broker works on the ones in flight.
                continue;
            }
            // Nothing to do until a response arrives, a cut finishes, or (idle) the next
            // group commit (re-checked periodically).
            let idle = s.wire.is_empty() && self.cuts.is_empty();
            let deadline = match s.wire.front() {
                Some((_, _, sent)) => *sent + response_limit,
                None => Instant::now() + Duration::from_millis(500),
            };
            tokio::select! {
                r = async {
                    match s.wire.front_mut() {
                        Some((_, fut, _)) => fut.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some((batches, _, _)) = s.wire.pop_front() {
                        self.complete(&batches, &r?)?;
                    }
                }
                _ = self.cuts.wait_front() => {}
                _ = notify.notified(), if idle => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if !s.wire.is_empty() {
                        return Err(Error::Timeout);
                    }
                }
            }
            if idle && !linger.is_zero() {
                // Caught up and woken by a commit (or the periodic re-check, which may
                // find one): let the commits of the next moments join it in one read
                // and one request (`cloud.linger_ms`, Kafka's linger.ms).
                tokio::time::sleep(linger).await;
            }
        }
    }

    /// Waits for every cut in preparation and takes its result (at the end of a session,
    /// so the next one starts from batches that are all encoded and durable).
    async fn settle_cuts(&mut self) {
        while !self.cuts.is_empty() {
            self.cuts.wait_front().await;
            if let Err(e) = self.finish_cuts() {
                tracing::warn!(cause = %e, "a batch cut failed at the end of the session");
            }
        }
    }

    /// Re-sequences every unacknowledged batch under a new producer identity.
    fn renew_producer(&mut self, p: ProducerState) -> Result<(), Error> {
        tracing::error!(
            producer_id = p.producer_id,
            "broker keeps rejecting our producer sequences; renewing the producer id \
             (unacknowledged batches are re-sent and may duplicate)"
        );
        self.buffer.set_producer(p)?;
        self.producer = Some(p);
        self.fenced = 0;
        for (topic, t) in self.state.topics.iter_mut() {
            self.buffer.reset_partition(topic, 0)?;
            for b in t.batches.iter_mut() {
                b.base = self.buffer.assign(topic, 0, &b.seqs)?;
                b.encoded = kafka::restamp(&b.encoded, p, b.base)?;
            }
            for r in t.restored.iter_mut() {
                r.desc.base_seq = self.buffer.assign(topic, 0, &r.desc.seqs)?;
            }
        }
        self.buffer.sync_uplink()?;
        Ok(())
    }

    fn compression(&self) -> Codec {
        match self.cfg.compression {
            CompressionName::Zstd => Codec::Zstd,
            CompressionName::Gzip => Codec::Gzip,
            CompressionName::Lz4 => Codec::Lz4,
            CompressionName::None => Codec::None,
        }
    }

    /// Turns complete restored descriptors and queued records into batches: decides every
    /// batch and its producer sequences (in order per topic) and starts a cut that encodes
    /// and compresses them and makes their descriptors durable ([`cuts`]; the batches are
    /// sent once it has finished, see [`Replicator::finish_cuts`]). Returns the number of
    /// batches cut.
    fn start_cut(&mut self, producer: ProducerState) -> Result<usize, Error> {
        let compression = self.compression();
        let mut assigned = false;
        // Every descriptor of the cut in one sled write (applied below, before the fsync).
        let mut descriptors = UplinkWrites::default();
        let max_batches = self.cfg.max_in_flight;
        let max_message = self.cfg.max_message_bytes;
        let mut too_large = Vec::new();
        let mut jobs: Vec<Job> = Vec::new();
        for (topic, t) in self.state.topics.iter_mut() {
            let mut queued = t.batches.len();
            while let Some(r) = t.restored.front() {
                if r.slots.iter().any(Option::is_none) {
                    break;
                }
                let Some(r) = t.restored.pop_front() else {
                    break;
                };
                let recs: Vec<_> = r.slots.into_iter().flatten().collect();
                let backlog = self
                    .live_from
                    .is_some_and(|l| r.desc.seqs.first().is_some_and(|s| *s < l));
                jobs.push(Job::new(topic, r.desc.base_seq, r.desc.seqs, recs, backlog));
                queued += 1;
            }
            if !t.restored.is_empty() {
                continue;
            }
            // Live (or, outside a live-first drain, all) records first, then backlog.
            loop {
                let backlog = t.unsent.is_empty();
                let queue = if backlog {
                    &mut t.unsent_backlog
                } else {
                    &mut t.unsent
                };
                if queue.is_empty() || queued >= max_batches {
                    break;
                }
                let mut recs = Vec::new();
                let (mut bytes, mut taken, mut bound) = (0, 0, 0);
                while let Some(r) = queue.front() {
                    let sz = r.encoded_len();
                    let kb = state::kafka_len_bound(r, &self.edge_id);
                    if !recs.is_empty()
                        && (bytes + sz > self.cfg.batch_max_bytes
                            || state::batch_len_bound(bound + kb, compression) > max_message)
                    {
                        break;
                    }
                    let Some(r) = queue.pop_front() else {
                        break;
                    };
                    taken += sz;
                    if recs.is_empty()
                        && state::batch_len_bound(kb, compression) > max_message
                        && !fits_alone(&r, &self.edge_id, &self.cfg, producer, compression)
                    {
                        tracing::warn!(topic = %r.topic, bytes = r.payload.len(), max_message_bytes = max_message,
                            "record too large for the cloud (cloud.max_message_bytes) dropped");
                        too_large.push(Held::of(&r));
                        continue;
                    }
                    bytes += sz;
                    bound += kb;
                    recs.push(r);
                }
                t.unsent_bytes -= taken.min(t.unsent_bytes);
                self.state.unsent_bytes -= taken.min(self.state.unsent_bytes);
                if recs.is_empty() {
                    continue;
                }
                let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
                let base = self.buffer.assign_in(&mut descriptors, topic, 0, &seqs)?;
                assigned = true;
                jobs.push(Job::new(topic, base, seqs, recs, backlog));
                queued += 1;
            }
        }
        self.buffer.apply_uplink(descriptors)?;
        if !too_large.is_empty() {
            self.buffer.discard_too_large(&too_large)?;
        }
        let jobs_len = jobs.len();
        if jobs_len == 0 {
            return Ok(0);
        }
        let live_jobs = jobs.iter().filter(|j| !j.batch.backlog).count();
        // The batches join their topics' queues at once (not sendable before their cut
        // has finished), so the memory bound and the live-first bookkeeping see them
        // while the next records are read.
        let mut work = Vec::with_capacity(jobs_len);
        let mut slots = Vec::with_capacity(jobs_len);
        for job in jobs {
            work.push((job.batch.base, job.records));
            self.state.batched_bytes += job.batch.raw_bytes;
            slots.push((job.topic.clone(), job.batch.base));
            let t = self.state.topics.entry(job.topic).or_default();
            t.batches.push_back(job.batch);
        }
        // Descriptors must be durable before their batches go on the wire.
        let sync = assigned.then(|| self.buffer.clone());
        self.cuts
            .start(slots, work, producer, compression, sync, live_jobs);
        Ok(jobs_len)
    }

    /// Takes the cuts that have finished, oldest first: their batches become sendable. A
    /// failed cut (encoding or descriptor fsync) and every later one are taken back out of
    /// their queues (never sent; their descriptors are resent from the buffer after a
    /// restart) and end the session. Returns whether a cut finished.
    fn finish_cuts(&mut self) -> Result<bool, Error> {
        self.cuts.poll();
        let mut any = false;
        while let Some(done) = self.cuts.take_finished() {
            any = true;
            let encoded = match done.result {
                Ok(e) => e,
                Err(cause) => {
                    let mut slots = done.slots;
                    slots.extend(self.cuts.abandon());
                    self.drop_batches(&slots);
                    return Err(kafka::Error::Encode(cause).into());
                }
            };
            for ((topic, base), bytes) in done.slots.iter().zip(encoded) {
                if let Some(b) = self
                    .state
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.batches.iter_mut().find(|b| b.base == *base))
                {
                    // From now on the batch holds its encoded bytes, not its records.
                    let held = b.held();
                    b.encoded = bytes;
                    self.state.batched_bytes =
                        self.state.batched_bytes.saturating_sub(held) + b.held();
                }
            }
            tracing::debug!(
                batches = done.slots.len(),
                live = done.live,
                encode_us = done.encode_time.as_micros() as u64,
                total_us = done.total.as_micros() as u64,
                "replicator cut"
            );
        }
        Ok(any)
    }

    /// Takes unsent batches back out of their queues.
    fn drop_batches(&mut self, slots: &[(String, i32)]) {
        for (topic, base) in slots {
            if let Some(t) = self.state.topics.get_mut(topic) {
                if let Some(pos) = t.batches.iter().position(|b| b.base == *base) {
                    if let Some(b) = t.batches.remove(pos) {
                        self.state.batched_bytes -= b.held().min(self.state.batched_bytes);
                    }
                }
            }
        }
    }
}

/// MQTT topic -> Kafka topic, remembered so a drain maps each name once, not once per
/// record (bounded: forgotten wholesale past [`TopicNames::MAX`] names).
#[derive(Default)]
struct TopicNames {
    map: HashMap<String, Option<String>>,
}

impl TopicNames {
    const MAX: usize = 4096;

    /// The Kafka topic of `mqtt`, or `None` (logged once per name) if it has none.
    fn kafka(&mut self, mqtt: &str) -> Option<&str> {
        if !self.map.contains_key(mqtt) {
            if self.map.len() >= Self::MAX {
                self.map.clear();
            }
            let kafka = common::topic::mqtt_to_kafka(mqtt)
                .map_err(
                    |e| tracing::error!(cause = %e, "unmappable topic, its records are skipped"),
                )
                .ok();
            self.map.insert(mqtt.to_owned(), kafka);
        }
        self.map.get(mqtt).and_then(|k| k.as_deref())
    }
}

/// A batch decided by `cut_batches`, waiting to be encoded.
struct Job {
    topic: String,
    batch: OutBatch,
    records: Vec<crate::buffer::Record>,
}

impl Job {
    fn new(
        topic: &str,
        base: i32,
        seqs: Vec<u64>,
        records: Vec<crate::buffer::Record>,
        backlog: bool,
    ) -> Job {
        Job {
            topic: topic.to_owned(),
            batch: OutBatch {
                raw_bytes: records.iter().map(|x| x.encoded_len()).sum(),
                base,
                seqs,
                priorities: records.iter().map(|x| x.priority).collect(),
                payload_bytes: records.iter().map(|x| x.payload.len() as u64).sum(),
                encoded: bytes::Bytes::new(),
                sent: false,
                backlog,
            },
            records,
        }
    }
}
