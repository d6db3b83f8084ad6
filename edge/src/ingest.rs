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
//! 2. with `sync: always`, if any of them was QoS 1/2, it waits (outside the async
//!    executor, `block_in_place`) until the group commit covering them is flushed;
//! 3. only then does it return the packets to rumqttd, whose router appends them and
//!    sends the PUBACKs.
//!
//! So a PUBACK implies the record is fsynced in the buffer: no window is left with
//! `sync: always`. With `sync: interval` the window is at most one interval. The wrapper
//! also sees what a local link cannot: the publisher's QoS (from the fixed header), its
//! client id (from CONNECT, the record key) and v5 topic aliases.
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
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{Error as ProtoError, Packet, Protocol, Publish, PublishProperties};

use crate::buffer::{Appended, Buffer, FullPolicy, Props, Record, SyncPolicy};
use crate::config::KeyMode;
use crate::filter::Uplink;
use crate::metrics::Metrics;
use crate::qos2::{Inbox, Qos2Sessions, Verdict};

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
}

/// A rumqttd codec wrapper that feeds the buffer (one per connection).
pub struct Ingest<P> {
    inner: P,
    ctx: Arc<IngestCtx>,
    client_id: Option<Bytes>,
    /// The id assigned to a client that sent an empty one (for the v5 CONNACK).
    assigned: Option<String>,
    clean_session: bool,
    aliases: HashMap<u16, Bytes>,
    ahead: VecDeque<Packet>,
    inbox: Inbox,
    /// Records of the current read, appended together.
    pending: Vec<Record>,
    /// QoS and payload length of each pending record.
    pending_meta: Vec<(u8, u64)>,
    appended: Vec<Appended>,
}

impl<P: Clone> Clone for Ingest<P> {
    fn clone(&self) -> Self {
        Ingest::new(self.inner.clone(), self.ctx.clone())
    }
}

impl<P> Drop for Ingest<P> {
    fn drop(&mut self) {
        // The connection ended: a clean session's QoS 2 state ends with it.
        if let (Some(c), true) = (&self.client_id, self.clean_session) {
            self.ctx.qos2.clear(c);
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

impl<P> Ingest<P> {
    /// Wraps a rumqttd codec (`V4` or `V5`).
    pub fn new(inner: P, ctx: Arc<IngestCtx>) -> Self {
        Ingest {
            inner,
            ctx,
            client_id: None,
            assigned: None,
            clean_session: true,
            aliases: HashMap::new(),
            ahead: VecDeque::new(),
            inbox: Inbox::default(),
            pending: Vec::new(),
            pending_meta: Vec::new(),
            appended: Vec::new(),
        }
    }

    /// Notes the client id (assigning one if empty) and session kind from CONNECT.
    fn connect(&mut self, c: &mut rumqttd::protocol::Connect) {
        self.clean_session = c.clean_session;
        // An empty id with a persistent session is refused by rumqttd, as MQTT requires.
        if c.client_id.is_empty() && c.clean_session {
            let id = assign_client_id();
            c.client_id = id.clone();
            self.assigned = Some(id);
        }
        let id = Bytes::from(c.client_id.clone());
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
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            return;
        };
        if topic.is_empty() || topic.contains(['+', '#']) {
            return;
        }
        let Some(priority) = self.ctx.uplink.priority(topic) else {
            return;
        };
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
            topic: topic.to_owned(),
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
        for (a, (qos, bytes)) in out.iter().zip(self.pending_meta.drain(..)) {
            if let Appended::Stored(gen) = a {
                self.ctx.metrics.ingested(bytes);
                if qos > 0 {
                    wait_gen = wait_gen.max(Some(*gen));
                }
            }
        }
        Ok(wait_gen)
    }
}

impl<P: Protocol> Protocol for Ingest<P> {
    fn read_mut(&mut self, stream: &mut BytesMut, max_size: usize) -> Result<Packet, ProtoError> {
        if let Some(p) = self.ahead.pop_front() {
            return Ok(p);
        }
        let mut recv_ms = None;
        let stop = loop {
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
            if self.ctx.buffer.sync_policy() == SyncPolicy::Always {
                let buffer = &self.ctx.buffer;
                if let Err(e) = tokio::task::block_in_place(|| buffer.wait_durable(gen)) {
                    tracing::error!(cause = %e, "buffer commit failed, closing connection");
                    self.ahead.clear();
                    return Err(ProtoError::InvalidProtocol);
                }
            }
        }
        match (self.ahead.pop_front(), stop) {
            (Some(p), _) => Ok(p),
            (None, e) => Err(e),
        }
    }

    fn write(&self, mut packet: Packet, write: &mut BytesMut) -> Result<usize, ProtoError> {
        if let (Packet::ConnAck(_, props), Some(id)) = (&mut packet, &self.assigned) {
            // MQTT 5 tells the client its assigned id (the v4 codec ignores properties).
            props
                .get_or_insert_with(Default::default)
                .assigned_client_identifier = Some(id.clone());
        }
        self.inner.write(packet, write)
    }
}
