//! Delivery from the log: one cursor per (topic, partition) a session's subscriptions
//! match. A cursor is only a position; messages are read from the store when the
//! partition's high watermark passes it (the connection is woken by the append through
//! [`PartitionLog::register`]), decoded, and handed to the session state machine. Recent
//! MQTT publishes are taken decoded from memory instead, QoS 0/1 ones even before the
//! high watermark passes them (early delivery: `recent`). Below a tiered partition's local
//! start a cursor reads the uploaded segments (`stored`), woken when one it waits for has
//! loaded.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::Notify;
use tracing::warn;

use super::codec::{self, Version};
use super::recent::{Entry, Recent, Watch};
use super::records::{self, Message};
use super::session::{Session, Ticket};
use super::stored::{Read, Stored};
use super::Error;
use crate::log::batch::BatchHeader;
use crate::log::partition::PartitionLog;
use crate::tier::PartTier;

/// Stop filling the write buffer past this many bytes (flush, then continue).
pub(crate) const WRITE_BUDGET: usize = 1 << 20;
/// Bytes read from one partition at a time.
const READ_BYTES: usize = 256 << 10;
/// Messages taken from a partition's in-memory recent appends at a time.
const KEPT_BATCH: usize = 64;

pub(crate) struct Cursor {
    pub(crate) log_name: Arc<str>,
    /// The topic's MQTT name, for records without an `mqtt.topic` header.
    pub(crate) mqtt: Option<Arc<str>>,
    pub(crate) partition: u32,
    pub(crate) log: Arc<PartitionLog>,
    /// Next offset to read.
    pub(crate) next: u64,
    /// Offsets below this were sent before a restart and not acknowledged: they are sent
    /// again with DUP set (0 for none).
    pub(crate) dup_below: u64,
    /// Keeps the partition's recent MQTT appends in memory while this cursor exists.
    watch: Watch,
    /// The tiered segment at `next` is loading (`stored::Read::Loading`).
    loading: Option<(Arc<PartTier>, u64)>,
}

/// Every cursor of one connection, plus retained messages waiting to be sent.
#[derive(Default)]
pub(crate) struct Cursors {
    pub(crate) list: Vec<Cursor>,
    keys: HashSet<(Arc<str>, u32)>,
    pub(crate) retained: VecDeque<Arc<Message>>,
    /// Scratch list for [`Cursors::pump`] (kept for its capacity).
    kept: Vec<Entry>,
}

/// Where a new cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Only messages appended from now on (a new subscription on an existing topic).
    End,
    /// Everything still in the log (a topic created after the subscription).
    Beginning,
    /// A saved position.
    At(u64),
}

impl Cursors {
    /// Adds a cursor unless one exists for the partition.
    pub(crate) fn open(
        &mut self,
        log_name: Arc<str>,
        mqtt: Option<Arc<str>>,
        partition: u32,
        log: Arc<PartitionLog>,
        start: Start,
    ) {
        if !self.keys.insert((log_name.clone(), partition)) {
            return;
        }
        let next = match start {
            Start::End => log.high_watermark(),
            Start::Beginning => log.log_start(),
            Start::At(o) => o,
        };
        let watch = Recent::of(&log).watch();
        self.list.push(Cursor {
            log_name,
            mqtt,
            partition,
            log,
            next,
            dup_below: 0,
            watch,
            loading: None,
        });
    }

    /// Adds a cursor at a stored position unless one exists for the partition; the
    /// messages below `sent` (if any) were sent before and go out again with DUP set.
    pub(crate) fn resume(
        &mut self,
        log_name: Arc<str>,
        mqtt: Option<Arc<str>>,
        partition: u32,
        log: Arc<PartitionLog>,
        (at, sent): (u64, Option<u64>),
    ) {
        let before = self.list.len();
        self.open(log_name, mqtt, partition, log, Start::At(at));
        if let (Some(c), Some(sent)) = (self.list.get_mut(before), sent) {
            c.dup_below = sent;
        }
    }

    /// Registers `n` on every partition, to be woken by the next append (and by the
    /// load of a tiered segment a cursor waits for).
    pub(crate) fn register(&self, n: &Arc<Notify>) {
        for c in &self.list {
            c.log.register(n);
            if let Some((pt, _)) = &c.loading {
                pt.register(n);
            }
        }
    }

    /// Whether something could be delivered now.
    pub(crate) fn ready(&self, session: &Session) -> bool {
        session.can_send()
            && (!self.retained.is_empty()
                || self.list.iter().any(|c| match &c.loading {
                    Some((pt, loads)) => pt.loads() != *loads,
                    None => c.next < c.log.high_watermark() || c.watch.recent().early_at(c.next),
                }))
    }

    /// The position each cursor may be committed at: its next offset, or the oldest
    /// delivery still in flight from it.
    /// What a persistent session stores: its subscriptions and committed positions.
    /// Sent marks only for cursors with deliveries in flight (the next offset not yet
    /// sent is then beyond the committed position).
    pub(crate) fn saved(&self, session: &Session) -> super::persist::SavedSession {
        let committed = self.committed(session);
        let sent = self
            .list
            .iter()
            .zip(&committed)
            .filter(|(c, (_, _, at))| c.next > *at)
            .map(|(c, _)| (c.log_name.to_string(), c.partition, c.next))
            .collect();
        super::persist::SavedSession {
            expiry: session.expiry,
            subscriptions: session
                .subscriptions
                .iter()
                .map(|(f, o)| (f.clone(), o.clone()))
                .collect(),
            cursors: committed
                .into_iter()
                .map(|(t, p, o)| (t.to_string(), p, o))
                .collect(),
            sent,
        }
    }

    /// Never above the high watermark: a message delivered before it was durable
    /// (`recent`) may be lost by a crash and its offset given to the message appended
    /// next, which a stored position past it would skip. (The writer's order already
    /// keeps a stored position within what is durable: a session write is queued after
    /// the appends its cursors delivered. The cap does not rely on that.)
    pub(crate) fn committed(&self, session: &Session) -> Vec<(Arc<str>, u32, u64)> {
        let mut pos: Vec<u64> = self
            .list
            .iter()
            .map(|c| c.log.at_most_visible(c.next))
            .collect();
        for t in session.tickets_in_flight() {
            if let Some(p) = pos.get_mut(t.cursor as usize) {
                *p = (*p).min(t.offset);
            }
        }
        self.list
            .iter()
            .zip(pos)
            .map(|(c, p)| (c.log_name.clone(), c.partition, p))
            .collect()
    }

    /// Encodes deliverable messages into `out` until nothing is left, the client's
    /// receive maximum is reached, or `out` passes [`WRITE_BUDGET`]. Returns whether it
    /// stopped on the budget (more may be ready).
    pub(crate) fn pump(
        &mut self,
        stored: Stored<'_>,
        session: &mut Session,
        version: Version,
        out: &mut BytesMut,
    ) -> Result<bool, Error> {
        let mut sent = 0u64;
        let more = self.pump_list(stored, session, version, out, &mut sent);
        crate::metrics::get().mqtt_sent.inc_by(sent);
        // The scratch list must not hold messages while the connection waits.
        self.kept.clear();
        more
    }

    fn pump_list(
        &mut self,
        stored: Stored<'_>,
        session: &mut Session,
        version: Version,
        out: &mut BytesMut,
        sent: &mut u64,
    ) -> Result<bool, Error> {
        let now = records::now_ms();
        while session.can_send() {
            let Some(m) = self.retained.pop_front() else {
                break;
            };
            if let (Some(p), _) = session.deliver(&m, None, false, true, now) {
                codec::encode(&p, version, out)?;
                *sent += 1;
            }
        }
        let kept = &mut self.kept;
        for (i, c) in self.list.iter_mut().enumerate() {
            c.loading = None;
            loop {
                if out.len() >= WRITE_BUDGET {
                    return Ok(true);
                }
                if !session.can_send() {
                    return Ok(false);
                }
                c.next = stored.first(&c.log, c.next);
                let hwm = c.log.high_watermark();
                // Recent MQTT appends are kept decoded: no store read, no decode. Those
                // above the high watermark only if they may go early (`recent`).
                kept.clear();
                c.watch.recent().from(c.next, hwm, KEPT_BATCH, kept);
                let before = c.next;
                for e in kept.iter() {
                    if !session.can_send() {
                        return Ok(false);
                    }
                    let at = (i as u32, e.offset, e.offset < c.dup_below);
                    *sent += deliver(session, at, &e.message, e.key.as_deref(), now, version, out)?;
                    c.next = e.offset + 1;
                }
                if c.next != before {
                    continue;
                }
                if c.next >= hwm {
                    break;
                }
                let batches = match stored.read(&c.log, c.next, READ_BYTES)? {
                    Read::Batches(b) => b,
                    Read::Nothing => break,
                    Read::Loading(pt, loads) => {
                        c.loading = Some((pt, loads));
                        break;
                    }
                };
                let mut blocked = false;
                for b in &batches {
                    let end = BatchHeader::parse(b)
                        .map(|h| h.base_offset.max(0) as u64 + h.offset_count());
                    let stored = match records::decode(b, c.next, c.mqtt.as_deref()) {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(topic = %c.log_name, partition = c.partition, cause = %e, "undecodable batch skipped");
                            Vec::new()
                        }
                    };
                    for s in stored {
                        if !session.can_send() {
                            blocked = true;
                            break;
                        }
                        let at = (i as u32, s.offset, s.offset < c.dup_below);
                        *sent +=
                            deliver(session, at, &s.message, s.key.as_deref(), now, version, out)?;
                        c.next = s.offset + 1;
                    }
                    if blocked {
                        break;
                    }
                    if let Ok(end) = end {
                        c.next = c.next.max(end);
                    }
                }
                if blocked {
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }
}

/// Hands the message at `(cursor, offset)` to the session and encodes what it sends,
/// with DUP set if `dup` (sent before a restart) and the delivery is QoS 1 or 2. Returns
/// how many publishes it encoded (0 or 1).
fn deliver(
    session: &mut Session,
    (cursor, offset, dup): (u32, u64, bool),
    m: &Message,
    key: Option<&[u8]>,
    now: i64,
    version: Version,
    out: &mut BytesMut,
) -> Result<u64, Error> {
    // No-local: the record key is the publisher's client id.
    let from_self = key == Some(session.client_id.as_bytes());
    let ticket = Ticket { cursor, offset };
    if let (Some(mut p), _) = session.deliver(m, Some(ticket), from_self, false, now) {
        if let Packet::Publish(p) = &mut p {
            p.dup = dup && p.qos != QoS::AtMostOnce;
        }
        codec::encode(&p, version, out)?;
        return Ok(1);
    }
    Ok(0)
}
