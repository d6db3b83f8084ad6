//! MQTT ingest: every publish a device sends enters the buffer *before* rumqttd's router
//! sees it, so the PUBACK can wait for the buffer's fsync.
//!
//! rumqttd acknowledges a QoS 1 publish as soon as its router appends it to an in-memory
//! log, and a local link subscribed to the uplink filters would only see it later (and
//! can silently lose it when it falls behind). Instead, [`Ingest`] wraps rumqttd's v4/v5
//! codec (`Protocol`), which the connection calls to decode frames before handing packets
//! to the router:
//!
//! 1. on the first decode call after bytes arrive, it decodes *every* complete frame in
//!    the read buffer, queues the packets, and appends the uplink publishes to the buffer
//!    in one call (one sequence each, one lock for the whole read);
//! 2. it returns the packets to rumqttd at once (the router routes them while the group
//!    commit runs) and notes the commit generation of the latest QoS 1/2 record;
//! 3. with `sync: always`, when rumqttd has the codec encode a PUBACK or PUBREC, the
//!    codec first waits until that generation is flushed: at once if it already is
//!    (often: the router's round trip takes about as long as a group commit), else on the
//!    worker for up to `INLINE_WAIT` if commits are quick, and otherwise outside it
//!    (`block_in_place`), so a slow disk never holds up a worker's other connections for
//!    longer than that. Every acknowledged publish was read, so appended, before its
//!    acknowledgement is encoded.
//!
//! So a PUBACK implies the record is fsynced in the buffer: no window is left with
//! `sync: always` (local subscribers may receive a publish before it is durable; only
//! the acknowledgement waits). With `sync: interval` the window is at most one interval.
//! The wrapper also sees what a local link cannot: the publisher's QoS (from the fixed
//! header), its client id (from CONNECT, the record key) and v5 topic aliases.
//!
//! Two more duties sit here because only the codec sees the raw packets:
//!
//! - **Client ids.** A CONNECT with an empty client id and a clean session (allowed by
//!   MQTT 3.1.1 and 5) gets an id assigned here, `edge-<hex>`, before rumqttd sees it, so
//!   the record key is never empty and rumqttd and the buffer use the same id; an MQTT 5
//!   client learns it from the CONNACK's Assigned Client Identifier.
//! - **QoS 2 exactly once.** A retransmitted QoS 2 PUBLISH (same packet id before PUBREL)
//!   is buffered once; see [`crate::qos2`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{Error as ProtoError, Packet, Protocol, Publish, PublishProperties};

use crate::buffer::{Appended, Buffer, FullPolicy, Props, Record, SyncPolicy};
use crate::client_packets::from_client;
use crate::config::KeyMode;
use crate::filter::Uplink;
use crate::metrics::Metrics;
use crate::qos2::{Inbox, Qos2Sessions, Verdict};
use crate::takeover::{Kind, LiveIds, Order, MAX_WAIT};

/// Shared ingest context.
pub struct IngestCtx {
    /// The buffer.
    pub buffer: Arc<Buffer>,
    /// Which topics go up.
    pub uplink: Uplink,
    /// Record key choice.
    pub key_mode: KeyMode,
    /// Whether full-buffer appends may block.
    pub full_policy: FullPolicy,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Whether the wall clock is believed synchronised.
    pub clock_synced: AtomicBool,
    /// QoS 2 packet ids between PUBLISH and PUBREL, per client.
    pub qos2: Qos2Sessions,
    /// Connections alive per client id (a reconnect waits for the previous one to end).
    pub live: LiveIds,
    /// The CONNECTs and DISCONNECTs passed to rumqttd, ordered (see `crate::takeover`).
    pub order: Order,
}

/// A rumqttd codec wrapper that feeds the buffer (one per connection).
pub struct Ingest<P> {
    inner: P,
    ctx: Arc<IngestCtx>,
    client_id: Option<Bytes>,
    /// Whether this connection is counted in `ctx.live` under `client_id`.
    live: bool,
    /// The id assigned to a client that sent an empty one (for the v5 CONNACK).
    assigned: Option<String>,
    clean_session: bool,
    aliases: HashMap<u16, Bytes>,
    /// The last topic seen, with its uplink priority and text (`None`: not buffered):
    /// devices publish to few topics, so most publishes skip the UTF-8 check and the
    /// filter match.
    last_topic: Option<(Bytes, Option<(u8, String)>)>,
    ahead: VecDeque<Packet>,
    inbox: Inbox,
    /// Records of the current read, appended together.
    pending: Vec<Record>,
    /// QoS and payload length of each pending record.
    pending_meta: Vec<(u8, u64)>,
    appended: Vec<Appended>,
    /// Commit generation an acknowledgement written now must wait for (`sync: always`):
    /// the latest QoS 1/2 append of this connection, or the buffer's latest append when a
    /// QoS 2 retransmission buffered by an earlier connection is passed on.
    ack_gen: AtomicU64,
    /// This connection's open [`Order`] entries ([`NO_TICKET`]: none): the CONNECT's
    /// until its CONNACK is written, the DISCONNECT's until the codec drops. Atomics
    /// because `write` only has `&self`.
    connect_ticket: AtomicU64,
    disconnect_ticket: AtomicU64,
    /// Whether the wrapped codec is rumqttd's v4 one (see [`without_properties`]).
    v4: bool,
}

/// No open [`Order`] entry.
const NO_TICKET: u64 = u64::MAX;

/// How long an acknowledgement waits for the group commit on the tokio worker itself
/// before it moves the wait off the worker (`block_in_place`); only while the latest
/// commit took less than this. Waiting inline saves the hand-off of the worker's other
/// connections to another thread (a thread wake-up and two context switches per wait);
/// blocking the worker for long costs more, as it reads nothing meanwhile and the next
/// commit is smaller. Commit rounds on the development VM (`edge-bench`, `sync: always`):
/// at 100 B p50 0.29 ms, p90 1.0 ms; at 64 KB p50 3.2 ms, p90 6.4 ms. Measured with 5
/// and 6 alternating pairs against the previous edge: 100 B CPU per message 6.10 ->
/// 5.70 us, 151k -> 159k msgs/s (medians); 64 KB unchanged. An unconditional 2 ms inline
/// wait saved more at 100 B (CPU -12%) but cut 64 KB ingest by 7-35%.
const INLINE_WAIT: Duration = Duration::from_millis(1);

impl<P: Clone> Clone for Ingest<P> {
    fn clone(&self) -> Self {
        Ingest::with_version(self.inner.clone(), self.ctx.clone(), self.v4)
    }
}

impl<P> Drop for Ingest<P> {
    fn drop(&mut self) {
        // The connection ended: a clean session's QoS 2 state ends with it.
        if let (Some(c), true) = (&self.client_id, self.clean_session) {
            self.ctx.qos2.clear(c);
        }
        // Last: a reconnect of this client id, or any CONNECT after this connection's
        // DISCONNECT, waits for it (see `crate::takeover`).
        if let (Some(c), true) = (&self.client_id, self.live) {
            self.ctx.live.leave(c);
        }
        for (kind, ticket) in [
            (Kind::Connect, *self.connect_ticket.get_mut()),
            (Kind::Disconnect, *self.disconnect_ticket.get_mut()),
        ] {
            if ticket != NO_TICKET {
                self.ctx.order.leave(kind, ticket);
            }
        }
    }
}

/// A client id for a client that sent none: unique per process run.
fn assign_client_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("edge-{:x}-{:x}-{n:x}", std::process::id(), start)
}

/// QoS and packet id of a PUBLISH at the start of `stream` (rumqttd keeps both
/// crate-private). Same layout in v4 and v5: fixed header, topic, packet id if QoS > 0.
fn publish_header(stream: &[u8]) -> Option<(u8, Option<u16>)> {
    let b0 = *stream.first()?;
    if b0 >> 4 != 3 {
        return None;
    }
    let qos = (b0 >> 1) & 3;
    let mut i = 1;
    while *stream.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    i += 1;
    let topic_len = u16::from_be_bytes([*stream.get(i)?, *stream.get(i + 1)?]) as usize;
    let at = i + 2 + topic_len;
    let pkid = if qos > 0 {
        Some(u16::from_be_bytes([*stream.get(at)?, *stream.get(at + 1)?]))
    } else {
        None
    };
    Some((qos, pkid))
}

/// The uplink priority and text of a publish to `topic`; `None` when it is not buffered
/// (not UTF-8, empty, a wildcard, or matching no uplink filter).
fn uplink_priority(uplink: &Uplink, topic: &[u8]) -> Option<(u8, String)> {
    let topic = std::str::from_utf8(topic).ok()?;
    if topic.is_empty() || topic.contains(['+', '#']) {
        return None;
    }
    Some((uplink.priority(topic)?, topic.to_owned()))
}

/// `packet` without MQTT 5 properties, for a 3.1.1 client. rumqttd 0.20's v4 writer
/// panics (`unreachable!`) on a packet that carries properties, and the router hands v4
/// connections what v5 clients published as published: a v5 publish with a user
/// property killed the connection of every 3.1.1 subscriber it was routed to.
fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, Some(_)) => Packet::Publish(p, None),
        Packet::PubAck(p, Some(_)) => Packet::PubAck(p, None),
        Packet::PubRec(p, Some(_)) => Packet::PubRec(p, None),
        Packet::PubRel(p, Some(_)) => Packet::PubRel(p, None),
        Packet::PubComp(p, Some(_)) => Packet::PubComp(p, None),
        Packet::SubAck(p, Some(_)) => Packet::SubAck(p, None),
        Packet::UnsubAck(p, Some(_)) => Packet::UnsubAck(p, None),
        Packet::Disconnect(p, Some(_)) => Packet::Disconnect(p, None),
        other => other,
    }
}

impl<P: 'static> Ingest<P> {
    /// Wraps a rumqttd codec (`V4` or `V5`).
    pub fn new(inner: P, ctx: Arc<IngestCtx>) -> Self {
        let v4 = std::any::TypeId::of::<P>() == std::any::TypeId::of::<rumqttd::protocol::v4::V4>();
        Self::with_version(inner, ctx, v4)
    }
}

impl<P> Ingest<P> {
    /// Wraps `inner`, a rumqttd v4 codec if `v4`.
    fn with_version(inner: P, ctx: Arc<IngestCtx>, v4: bool) -> Self {
        Ingest {
            v4,
            inner,
            ctx,
            client_id: None,
            live: false,
            assigned: None,
            clean_session: true,
            aliases: HashMap::new(),
            last_topic: None,
            ahead: VecDeque::new(),
            inbox: Inbox::default(),
            pending: Vec::new(),
            pending_meta: Vec::new(),
            appended: Vec::new(),
            ack_gen: AtomicU64::new(0),
            connect_ticket: AtomicU64::new(NO_TICKET),
            disconnect_ticket: AtomicU64::new(NO_TICKET),
        }
    }

    /// Notes the client id (assigning one if empty) and session kind from CONNECT.
    fn connect(&mut self, c: &mut rumqttd::protocol::Connect) {
        self.clean_session = c.clean_session;
        // MQTT allows keep alive 0 (no keep-alive mechanism: 3.1.1 3.1.2.10, 5 3.1.2.10)
        // and some device stacks send it; rumqttd 0.20 closes such a connection before
        // its CONNACK (`ZeroKeepAlive`). Its longest timeout stands in: a client that
        // sends nothing is dropped after 1.5 x 65,535 s (about 27 hours) of silence.
        if c.keep_alive == 0 {
            c.keep_alive = u16::MAX;
        }
        // An empty id with a persistent session is refused by rumqttd, as MQTT requires.
        if c.client_id.is_empty() && c.clean_session {
            let id = assign_client_id();
            c.client_id = id.clone();
            self.assigned = Some(id);
        }
        let id = Bytes::from(c.client_id.clone());
        let ctx = &self.ctx;
        if !self.live {
            // A reconnect waits until the previous connection of this id is gone, so that
            // rumqttd's router reads that one's Disconnect first (`crate::takeover`).
            let timed_out = if ctx.live.busy(&id) {
                tokio::task::block_in_place(|| ctx.live.enter(&id, MAX_WAIT))
            } else {
                ctx.live.enter(&id, MAX_WAIT)
            };
            if timed_out {
                tracing::debug!(client_id = %String::from_utf8_lossy(&id), "previous connection still open, replacing it");
            }
            self.live = true;
        }
        if *self.connect_ticket.get_mut() == NO_TICKET {
            // A connection whose DISCONNECT came earlier may still hold the connection id
            // rumqttd will give this one (`crate::takeover`).
            let (ticket, blocked) = ctx.order.enter(Kind::Connect, None);
            if blocked
                && tokio::task::block_in_place(|| {
                    ctx.order.wait(Kind::Connect, ticket, None, MAX_WAIT)
                })
            {
                tracing::debug!("a disconnected connection is still open, connecting anyway");
            }
            *self.connect_ticket.get_mut() = ticket;
        }
        if c.clean_session {
            self.ctx.qos2.clear(&id);
        }
        self.client_id = Some(id);
    }

    /// Queues one publish for the buffer if it goes up (see [`Ingest::append_pending`]).
    fn ingest(
        &mut self,
        publish: &mut Publish,
        props: &Option<PublishProperties>,
        qos: u8,
        recv_ms: &mut Option<i64>,
    ) {
        if let Some(alias) = props.as_ref().and_then(|p| p.topic_alias) {
            if publish.topic.is_empty() {
                if let Some(t) = self.aliases.get(&alias) {
                    publish.topic = t.clone();
                }
            } else {
                self.aliases.insert(alias, publish.topic.clone());
            }
        }
        if !matches!(&self.last_topic, Some((t, _)) if *t == publish.topic) {
            let found = uplink_priority(&self.ctx.uplink, &publish.topic);
            self.last_topic = Some((publish.topic.clone(), found));
        }
        let Some((_, Some((priority, topic)))) = &self.last_topic else {
            return;
        };
        let (priority, topic) = (*priority, topic.clone());
        // One receive time per read: these frames arrived together.
        let recv_ms = *recv_ms.get_or_insert_with(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        });
        let props = match props {
            Some(p) => Props {
                content_type: p.content_type.clone(),
                payload_format: p.payload_format_indicator,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user: p.user_properties.clone(),
            },
            None => Props::default(),
        };
        self.pending_meta.push((qos, publish.payload.len() as u64));
        self.pending.push(Record {
            seq: 0,
            recv_ms,
            clock_synced: self.ctx.clock_synced.load(Ordering::Relaxed),
            qos,
            retain: publish.retain,
            priority,
            topic,
            key: match self.ctx.key_mode {
                KeyMode::ClientId => self.client_id.clone(),
                KeyMode::None => None,
            },
            props,
            payload: publish.payload.clone(),
        });
    }

    /// Appends the queued records of this read to the buffer in one call; returns the
    /// commit generation a QoS 1/2 PUBACK must wait for.
    fn append_pending(&mut self) -> Result<Option<u64>, ProtoError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let buffer = &self.ctx.buffer;
        let (recs, out) = (&mut self.pending, &mut self.appended);
        out.clear();
        let result = if self.ctx.full_policy == FullPolicy::Block || buffer.congested() {
            tokio::task::block_in_place(|| buffer.append_all(recs.drain(..), out))
        } else {
            buffer.append_all(recs.drain(..), out)
        };
        if let Err(e) = result {
            tracing::error!(cause = %e, "buffer append failed, closing connection");
            self.pending_meta.clear();
            return Err(ProtoError::InvalidProtocol);
        }
        let mut wait_gen = None;
        let (mut records, mut payload_bytes) = (0, 0);
        for (a, (qos, bytes)) in out.iter().zip(self.pending_meta.drain(..)) {
            if let Appended::Stored(gen) = a {
                records += 1;
                payload_bytes += bytes;
                if qos > 0 {
                    wait_gen = wait_gen.max(Some(*gen));
                }
            }
        }
        if records > 0 {
            self.ctx.metrics.ingested(records, payload_bytes);
        }
        Ok(wait_gen)
    }
}

impl<P> Ingest<P> {
    /// A DISCONNECT passes (the client's, `wait`: first wait for earlier CONNECTs to be
    /// registered; or rumqttd's own): rumqttd's router frees this connection's id when
    /// it handles it, before this codec is dropped (`crate::takeover`).
    fn disconnecting(&self, wait: bool) {
        if self.disconnect_ticket.load(Ordering::Relaxed) != NO_TICKET {
            return;
        }
        let order = &self.ctx.order;
        let own = Some(self.connect_ticket.load(Ordering::Relaxed)).filter(|t| *t != NO_TICKET);
        let (ticket, blocked) = order.enter(Kind::Disconnect, own);
        self.disconnect_ticket.store(ticket, Ordering::Relaxed);
        if wait
            && blocked
            && tokio::task::block_in_place(|| order.wait(Kind::Disconnect, ticket, own, MAX_WAIT))
        {
            tracing::debug!("an earlier connect is not registered yet, disconnecting anyway");
        }
    }

    /// With `sync: always`, waits until every QoS 1/2 record this connection may
    /// acknowledge now is flushed (durability step 3 in the buffer's docs).
    fn wait_acked_durable(&self) -> Result<(), ProtoError> {
        let buffer = &self.ctx.buffer;
        let gen = self.ack_gen.load(Ordering::Relaxed);
        if gen == 0 || buffer.sync_policy() != SyncPolicy::Always || buffer.is_durable(gen) {
            return Ok(());
        }
        // A small group commit ends within a fraction of a millisecond: waiting for it
        // here is cheaper than handing this worker's other connections to another thread.
        // Large or slow commits are waited for off the worker at once, and an unexpectedly
        // slow one holds the worker up for INLINE_WAIT at most.
        let inline = buffer.last_commit_time() < INLINE_WAIT;
        let waited = match inline.then(|| buffer.wait_durable_for(gen, INLINE_WAIT)) {
            Some(Ok(true)) => Ok(()),
            Some(Err(e)) => Err(e),
            Some(Ok(false)) | None => tokio::task::block_in_place(|| buffer.wait_durable(gen)),
        };
        waited.map_err(|e| {
            tracing::error!(cause = %e, "buffer commit failed, closing connection");
            ProtoError::InvalidProtocol
        })
    }
}

impl<P: Protocol> Protocol for Ingest<P> {
    fn read_mut(&mut self, stream: &mut BytesMut, max_size: usize) -> Result<Packet, ProtoError> {
        if let Some(p) = self.ahead.pop_front() {
            return Ok(p);
        }
        let mut recv_ms = None;
        let stop = loop {
            // A packet only a server sends is a protocol error, and some of them make
            // rumqttd's codec panic (`crate::client_packets`).
            if let Some(&first) = stream.first() {
                if !from_client(first) {
                    break ProtoError::InvalidPacketType(first >> 4);
                }
            }
            let (qos, pkid) = publish_header(stream).unwrap_or((0, None));
            match self.inner.read_mut(stream, max_size) {
                Ok(Packet::Publish(mut publish, props)) => {
                    let verdict = match (qos, pkid) {
                        (2, Some(pkid)) => {
                            let client = self.client_id.clone().unwrap_or_default();
                            self.inbox.publish(&self.ctx.qos2, &client, pkid)
                        }
                        _ => Verdict::New,
                    };
                    if verdict == Verdict::Drop {
                        tracing::debug!(pkid, "qos 2 retransmission dropped");
                        continue;
                    }
                    if verdict == Verdict::New {
                        self.ingest(&mut publish, &props, qos, &mut recv_ms);
                    } else {
                        // Appended before this read (maybe by a connection that died
                        // before its PUBREC): its generation is at most the latest.
                        let latest = self.ctx.buffer.latest_gen();
                        self.ack_gen.fetch_max(latest, Ordering::Relaxed);
                    }
                    self.ahead.push_back(Packet::Publish(publish, props));
                }
                Ok(mut packet) => {
                    match &mut packet {
                        Packet::Connect(c, ..) => self.connect(c),
                        Packet::PubRel(rel, _) => {
                            let client = self.client_id.clone().unwrap_or_default();
                            self.inbox.release(&self.ctx.qos2, &client, rel.pkid);
                        }
                        Packet::Disconnect(..) => self.disconnecting(true),
                        _ => {}
                    }
                    self.ahead.push_back(packet);
                }
                Err(e) => break e,
            }
        };
        let wait_gen = match self.append_pending() {
            Ok(g) => g,
            Err(e) => {
                self.ahead.clear();
                return Err(e);
            }
        };
        if let Some(gen) = wait_gen {
            self.ack_gen.fetch_max(gen, Ordering::Relaxed);
        }
        match (self.ahead.pop_front(), stop) {
            (Some(p), _) => Ok(p),
            (None, e) => Err(e),
        }
    }

    fn write(&self, mut packet: Packet, write: &mut BytesMut) -> Result<usize, ProtoError> {
        match packet {
            Packet::PubAck(..) | Packet::PubRec(..) => self.wait_acked_durable()?,
            Packet::ConnAck(..) => {
                // The router registered this connection.
                let ticket = self.connect_ticket.swap(NO_TICKET, Ordering::Relaxed);
                if ticket != NO_TICKET {
                    self.ctx.order.leave(Kind::Connect, ticket);
                }
            }
            // The router's own DISCONNECT: it already freed the id, so later CONNECTs
            // wait for this link to end.
            Packet::Disconnect(..) => self.disconnecting(false),
            _ => {}
        }
        if let (Packet::ConnAck(_, props), Some(id)) = (&mut packet, &self.assigned) {
            // MQTT 5 tells the client its assigned id (the v4 codec ignores properties).
            props
                .get_or_insert_with(Default::default)
                .assigned_client_identifier = Some(id.clone());
        }
        if self.v4 {
            packet = without_properties(packet);
        }
        self.inner.write(packet, write)
    }
}

#[cfg(test)]
mod tests {
    use rumqttd::protocol::v4::V4;
    use rumqttd::protocol::{PubAck, PubAckReason};

    use super::*;
    use crate::buffer::BufferConfig;

    fn ingest(dir: &std::path::Path) -> Ingest<V4> {
        ingest_with(dir, Uplink::new([("#".to_string(), 0)]))
    }

    fn ingest_with(dir: &std::path::Path, uplink: Uplink) -> Ingest<V4> {
        Ingest::new(V4, ctx(dir, uplink))
    }

    fn ctx(dir: &std::path::Path, uplink: Uplink) -> Arc<IngestCtx> {
        let buffer = Buffer::open(BufferConfig {
            dir: dir.to_path_buf(),
            quota_bytes: u64::MAX,
            full_policy: FullPolicy::DropOldest,
            sync: SyncPolicy::Always,
            batch_max_bytes: 1 << 20,
            cache_bytes: 1 << 20,
            direct_io: true,
            direct_io_backlog_bytes: crate::buffer::DIRECT_BACKLOG_BYTES,
        })
        .unwrap();
        let ctx = IngestCtx {
            buffer: Arc::new(buffer),
            uplink,
            key_mode: KeyMode::None,
            full_policy: FullPolicy::DropOldest,
            metrics: Arc::new(Metrics::new()),
            clock_synced: AtomicBool::new(false),
            qos2: Default::default(),
            live: Default::default(),
            order: Default::default(),
        };
        Arc::new(ctx)
    }

    /// A packet only a server sends is refused with a protocol error by both codecs,
    /// before rumqttd decodes it: rumqttd 0.20's v5 codec panicked on a CONNACK with a
    /// payload (`28 01 00 e3`, found by the `edge_mqtt` fuzz target). A publish before
    /// it in the same read still goes through.
    #[test]
    fn server_only_packets_are_refused_not_decoded() {
        fn check<P: Protocol>(mut codec: Ingest<P>, publish: &[u8]) {
            for t in [0u8, 2, 9, 11, 13, 15] {
                let mut stream = BytesMut::from(publish);
                stream.extend_from_slice(&[t << 4 | 8, 1, 0, 0xe3]);
                assert!(matches!(
                    codec.read_mut(&mut stream, 1 << 20),
                    Ok(Packet::Publish(..))
                ));
                match codec.read_mut(&mut stream, 1 << 20) {
                    Err(ProtoError::InvalidPacketType(got)) => assert_eq!(got, t),
                    other => panic!("type {t}: {other:?}"),
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let uplink = || Uplink::new([("#".to_string(), 0)]);
        // A v5 PUBLISH has a properties length (0) after the packet id.
        let v5_publish = [0x32, 9, 0, 1, b't', 0, 7, 0, b'a', b'b', b'c'];
        check(
            Ingest::new(rumqttd::protocol::v5::V5, ctx(dir.path(), uplink())),
            &v5_publish,
        );
        let dir = tempfile::tempdir().unwrap();
        check(Ingest::new(V4, ctx(dir.path(), uplink())), &publish_frame());
    }

    /// A message a v5 client published with properties reaches a 3.1.1 subscriber
    /// without them (rumqttd's v4 writer panicked on it); a v5 subscriber keeps them.
    #[test]
    fn v4_subscribers_get_v5_publishes_without_properties() {
        let props = || PublishProperties {
            user_properties: vec![("site".into(), "a".into())],
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        let publish = || Packet::Publish(Publish::new("t/1", "hello", false), Some(props()));
        let dir = tempfile::tempdir().unwrap();
        let mut out = BytesMut::new();
        ingest(dir.path()).write(publish(), &mut out).unwrap();
        let mut read = out.clone();
        match V4.read_mut(&mut read, 1 << 20).unwrap() {
            Packet::Publish(p, None) => assert_eq!(&p.payload[..], b"hello"),
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let v5 = Ingest::new(rumqttd::protocol::v5::V5, ctx(dir.path(), Uplink::new([])));
        let mut out5 = BytesMut::new();
        v5.write(publish(), &mut out5).unwrap();
        match rumqttd::protocol::v5::V5
            .read_mut(&mut out5, 1 << 20)
            .unwrap()
        {
            Packet::Publish(_, Some(p)) => assert_eq!(p.user_properties, props().user_properties),
            other => panic!("{other:?}"),
        }
    }

    /// A CONNECT with keep alive 0 (allowed by MQTT, refused by rumqttd) reaches rumqttd
    /// with its longest keep alive instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_alive_zero_becomes_the_longest() {
        let dir = tempfile::tempdir().unwrap();
        let mut codec = ingest(dir.path());
        let connect = [
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 1, b'c',
        ];
        let mut stream = BytesMut::from(&connect[..]);
        match codec.read_mut(&mut stream, 1 << 20) {
            Ok(Packet::Connect(c, ..)) => assert_eq!(c.keep_alive, u16::MAX),
            other => panic!("{other:?}"),
        }
    }

    /// A QoS 1 PUBLISH of topic `t`, packet id 7.
    fn publish_frame() -> BytesMut {
        BytesMut::from(&[0x32, 8, 0, 1, b't', 0, 7, b'a', b'b', b'c'][..])
    }

    fn puback() -> Packet {
        Packet::PubAck(
            PubAck {
                pkid: 7,
                reason: PubAckReason::Success,
            },
            None,
        )
    }

    /// `sync: always`: the PUBACK is encoded only once the record is flushed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn puback_waits_for_the_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut codec = ingest(dir.path());
        let mut stream = publish_frame();
        assert!(matches!(
            codec.read_mut(&mut stream, 1 << 20),
            Ok(Packet::Publish(..))
        ));
        let gen = codec.ack_gen.load(Ordering::Relaxed);
        assert!(gen > 0, "a QoS 1 record was appended");
        let mut out = BytesMut::new();
        codec.write(puback(), &mut out).unwrap();
        assert!(codec.ctx.buffer.is_durable(gen), "acked before the fsync");
        assert_eq!(&out[..], &[0x40, 2, 0, 7]);
    }

    /// A commit slower than [`INLINE_WAIT`]: the wait moves off the worker and the PUBACK
    /// is still encoded only once the record is flushed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn puback_waits_for_a_commit_slower_than_the_inline_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut codec = ingest(dir.path());
        let slow = INLINE_WAIT * 10;
        codec.ctx.buffer.slow_commits_for_test(slow);
        let started = std::time::Instant::now();
        let mut stream = publish_frame();
        assert!(matches!(
            codec.read_mut(&mut stream, 1 << 20),
            Ok(Packet::Publish(..))
        ));
        let gen = codec.ack_gen.load(Ordering::Relaxed);
        let mut out = BytesMut::new();
        codec.write(puback(), &mut out).unwrap();
        assert!(codec.ctx.buffer.is_durable(gen), "acked before the fsync");
        assert!(started.elapsed() >= slow, "{:?}", started.elapsed());
        assert_eq!(&out[..], &[0x40, 2, 0, 7]);
        // The next acknowledgement knows commits are slow and waits off the worker.
        assert!(codec.ctx.buffer.last_commit_time() >= slow);
        let mut stream = publish_frame();
        codec.read_mut(&mut stream, 1 << 20).unwrap();
        let gen = codec.ack_gen.load(Ordering::Relaxed);
        out.clear();
        codec.write(puback(), &mut out).unwrap();
        assert!(codec.ctx.buffer.is_durable(gen), "acked before the fsync");
    }

    /// A PUBLISH of `topic` with payload `p`.
    fn publish(topic: &str) -> Publish {
        let topic = Bytes::copy_from_slice(topic.as_bytes());
        Publish::new(topic, Bytes::from_static(b"p"), false)
    }

    /// The per-connection topic cache gives each publish its own topic's priority, and
    /// skips topics outside the uplink filters, whatever the previous topic was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_topic_gets_its_own_priority() {
        let dir = tempfile::tempdir().unwrap();
        let uplink = Uplink::new([("a/#".to_string(), 5), ("b/#".to_string(), 1)]);
        let mut codec = ingest_with(dir.path(), uplink);
        for t in ["a/x", "a/x", "c/y", "b/z", "a/x", "c/y", "b/z", "b/z"] {
            codec.ingest(&mut publish(t), &None, 1, &mut None);
        }
        let got: Vec<(&str, u8)> = codec
            .pending
            .iter()
            .map(|r| (r.topic.as_str(), r.priority))
            .collect();
        assert_eq!(
            got,
            [
                ("a/x", 5),
                ("a/x", 5),
                ("b/z", 1),
                ("a/x", 5),
                ("b/z", 1),
                ("b/z", 1)
            ]
        );
    }

    /// When the record cannot be made durable, no PUBACK is encoded: the connection
    /// closes (the publisher retransmits on reconnect).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_puback_when_the_commit_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut codec = ingest(dir.path());
        // Batch files cannot be created any more.
        let batches = dir.path().join("batches");
        // Moved away in one step (the spare-file thread may be creating files in it).
        std::fs::rename(&batches, dir.path().join("gone")).unwrap();
        std::fs::write(&batches, b"not a directory").unwrap();
        let mut stream = publish_frame();
        assert!(codec.read_mut(&mut stream, 1 << 20).is_ok());
        let mut out = BytesMut::new();
        let result = codec.write(puback(), &mut out);
        assert!(result.is_err(), "PUBACK encoded for a record never stored");
        assert!(out.is_empty());
    }
}
