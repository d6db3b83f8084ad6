//! Shared subscriptions (`$share/<group>/<filter>`, MQTT 5 4.8.2; also accepted from 3.1.1
//! clients): each matching message goes to one member of the group.
//!
//! A share group is a position in the log, like a session: one cursor per partition its
//! filter matches, owned by the group, not by a member. A dispatcher task per group reads
//! from those cursors when an append wakes it and hands each message to the next member
//! (round robin) whose window (its receive maximum) has room; every delivery stays in
//! that member's window until the member reports it done (QoS 0: sent; QoS 1: PUBACK;
//! QoS 2: PUBREC). A member that leaves gives its unfinished deliveries back to the group,
//! which delivers them to another member first.
//!
//! Persistence (the hub stores it under the group's subscription, `persist::SavedShareGroup`):
//! 1. A group's committed position per partition is the oldest offset no member has
//!    finished: the cursor's next offset, lowered to any delivery still in a member's
//!    window or waiting to be handed out again ([`ShareGroup::committed`]).
//! 2. It is written when the group is created (before the SUBACK), at most once per
//!    [`SAVE_EVERY`] while it moves (by the dispatcher, only if it changed: no write per
//!    message), when the last member leaves (durably, before that connection is released),
//!    and on a clean shutdown.
//! 3. A group without members keeps its positions (in the hub and in the store) for
//!    `mqtt.share_group_expiry_secs`; a member joining within that time, also after a
//!    restart, resumes from them: what was published meanwhile is delivered.
//! 4. So delivery is at least once: a kill redelivers what members finished after the
//!    last write (at most [`SAVE_EVERY`] of progress), and every delivery still in a
//!    window when the cloud stopped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::warn;

use super::codec::{self, CodecError, Version};
use super::cursor::Start;
use super::hub::Event;
use super::inbox::EventTx;
use super::recent::{Recent, Watch};
use super::records::{self, Message};
use super::session::{Session, Ticket, SHARED_TICKET};
use super::stored::{Read, Stored};
use super::topic;
use crate::log::batch::BatchHeader;
use crate::log::partition::PartitionLog;
use crate::storage::Store;
use crate::tier::Tiers;

/// Bytes read from one partition at a time.
const READ_BYTES: usize = 256 << 10;
/// Messages taken from a partition's recent MQTT appends at a time.
const KEPT_BATCH: usize = 64;

/// A moving group's positions are written at most this often.
pub(crate) const SAVE_EVERY: Duration = Duration::from_secs(1);

/// One message handed to one member.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) cursor: usize,
    pub(crate) offset: u64,
    pub(crate) message: Arc<Message>,
}

struct Member {
    conn: u64,
    tx: EventTx,
    window: usize,
    inflight: HashMap<(usize, u64), Delivery>,
}

struct GroupCursor {
    name: Arc<str>,
    partition: u32,
    mqtt: Option<Arc<str>>,
    log: Arc<PartitionLog>,
    next: u64,
    /// Keeps the partition's recent MQTT appends in memory while the group exists: QoS
    /// 0/1 ones are handed out before their fsync, as to any subscriber (`recent`).
    watch: Watch,
}

#[derive(Default)]
struct State {
    members: Vec<Member>,
    cursors: Vec<GroupCursor>,
    keys: HashSet<(Arc<str>, u32)>,
    /// Deliveries given back by members that left, delivered before new messages.
    redeliver: VecDeque<Delivery>,
    turn: usize,
    closed: bool,
}

impl State {
    /// The next member (round robin) with room in its window.
    fn pick(&mut self) -> Option<usize> {
        let n = self.members.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if self.members[i].inflight.len() < self.members[i].window {
                self.turn = i + 1;
                return Some(i);
            }
        }
        None
    }
}

/// One share group: `$share/<name>/<filter>`.
pub(crate) struct ShareGroup {
    /// The subscription as the client wrote it (`$share/<name>/<filter>`).
    pub(crate) key: String,
    pub(crate) filter: String,
    state: Mutex<State>,
    wake: Notify,
}

impl std::fmt::Debug for ShareGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareGroup")
            .field("key", &self.key)
            .finish()
    }
}

impl ShareGroup {
    pub(crate) fn new(key: &str, filter: &str) -> Arc<ShareGroup> {
        Arc::new(ShareGroup {
            key: key.to_string(),
            filter: filter.to_string(),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a cursor on a partition the filter matches (unless the group has one).
    pub(crate) fn open(
        &self,
        log_name: Arc<str>,
        mqtt: Option<Arc<str>>,
        partition: u32,
        log: Arc<PartitionLog>,
        start: Start,
    ) {
        let mut st = self.lock();
        if !st.keys.insert((log_name.clone(), partition)) {
            return;
        }
        let next = match start {
            Start::End => log.high_watermark(),
            Start::Beginning => log.log_start(),
            Start::At(o) => o,
        };
        let watch = Recent::of(&log).watch();
        st.cursors.push(GroupCursor {
            name: log_name,
            partition,
            mqtt,
            log,
            next,
            watch,
        });
        drop(st);
        self.wake.notify_one();
    }

    /// Adds (or refreshes) a member with `window` deliveries in flight at most.
    pub(crate) fn join(&self, conn: u64, tx: EventTx, window: usize) {
        let mut st = self.lock();
        match st.members.iter_mut().find(|m| m.conn == conn) {
            Some(m) => m.window = window.max(1),
            None => st.members.push(Member {
                conn,
                tx,
                window: window.max(1),
                inflight: HashMap::new(),
            }),
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Removes a member; its unfinished deliveries go to the others. Returns whether the
    /// group has no member left (it is then closed).
    pub(crate) fn leave(&self, conn: u64) -> bool {
        let mut st = self.lock();
        if let Some(i) = st.members.iter().position(|m| m.conn == conn) {
            let m = st.members.remove(i);
            let mut back: Vec<Delivery> = m.inflight.into_values().collect();
            back.sort_by_key(|d| (d.cursor, d.offset));
            st.redeliver.extend(back);
        }
        let empty = st.members.is_empty();
        st.closed = empty;
        drop(st);
        self.wake.notify_one();
        empty
    }

    /// A member finished a delivery (or, `give_back`, could not take it).
    pub(crate) fn done(&self, conn: u64, cursor: usize, offset: u64, give_back: bool) {
        let mut st = self.lock();
        let d = st
            .members
            .iter_mut()
            .find(|m| m.conn == conn)
            .and_then(|m| m.inflight.remove(&(cursor, offset)));
        if let (true, Some(d)) = (give_back, d) {
            st.redeliver.push_front(d);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Where a group restarted now must deliver from: per cursor `(log topic, partition,
    /// oldest offset no member finished)`.
    /// Never above the high watermark (see `Cursors::committed`).
    pub(crate) fn committed(&self) -> Vec<(Arc<str>, u32, u64)> {
        let st = self.lock();
        let mut pos: Vec<u64> = st
            .cursors
            .iter()
            .map(|c| c.log.at_most_visible(c.next))
            .collect();
        let unfinished = st.members.iter().flat_map(|m| m.inflight.keys().copied());
        let again = st.redeliver.iter().map(|d| (d.cursor, d.offset));
        for (ci, offset) in unfinished.chain(again) {
            if let Some(p) = pos.get_mut(ci) {
                *p = (*p).min(offset);
            }
        }
        st.cursors
            .iter()
            .zip(pos)
            .map(|(c, p)| (c.name.clone(), c.partition, p))
            .collect()
    }

    /// Hands out what the members have room for.
    pub(super) fn dispatch(self: &Arc<Self>, stored: Stored<'_>) {
        let mut st = self.lock();
        while !st.redeliver.is_empty() {
            let Some(i) = st.pick() else { return };
            if let Some(d) = st.redeliver.pop_front() {
                self.send(&mut st, i, d);
            }
        }
        for ci in 0..st.cursors.len() {
            loop {
                let (log, mqtt) = (st.cursors[ci].log.clone(), st.cursors[ci].mqtt.clone());
                let next = stored.first(&log, st.cursors[ci].next);
                st.cursors[ci].next = next;
                let hwm = log.high_watermark();
                // Recent MQTT appends, decoded; above the high watermark only the ones
                // that may go early (`recent`).
                let mut kept = Vec::new();
                st.cursors[ci]
                    .watch
                    .recent()
                    .from(next, hwm, KEPT_BATCH, &mut kept);
                for e in kept {
                    if !self.offer(&mut st, ci, e.offset, e.message) {
                        return;
                    }
                }
                if st.cursors[ci].next != next {
                    continue;
                }
                if next >= hwm {
                    break;
                }
                // A tiered segment loading wakes the dispatcher (`run` registered it).
                let batches = match stored.read(&log, next, READ_BYTES) {
                    Ok(Read::Batches(b)) => b,
                    Ok(Read::Nothing | Read::Loading(..)) => break,
                    Err(e) => {
                        warn!(group = self.key, cause = %e, "shared subscription read failed");
                        break;
                    }
                };
                for b in &batches {
                    let from = st.cursors[ci].next;
                    let stored = records::decode(b, from, mqtt.as_deref()).unwrap_or_else(|e| {
                        warn!(group = self.key, cause = %e, "undecodable batch skipped");
                        Vec::new()
                    });
                    for s in stored {
                        if !self.offer(&mut st, ci, s.offset, Arc::new(s.message)) {
                            return;
                        }
                    }
                    if let Ok(h) = BatchHeader::parse(b) {
                        let end = h.base_offset.max(0) as u64 + h.offset_count();
                        st.cursors[ci].next = st.cursors[ci].next.max(end);
                    }
                }
            }
        }
    }

    /// Hands the message at `offset` of cursor `ci` to a member with room if it matches
    /// the group's filter, and moves the cursor past it. False (cursor not moved) when it
    /// matches and every member's window is full.
    fn offer(
        self: &Arc<Self>,
        st: &mut State,
        ci: usize,
        offset: u64,
        message: Arc<Message>,
    ) -> bool {
        if topic::matches(&self.filter, &message.topic) {
            let Some(i) = st.pick() else { return false };
            let d = Delivery {
                cursor: ci,
                offset,
                message,
            };
            self.send(st, i, d);
        }
        st.cursors[ci].next = offset + 1;
        true
    }

    fn send(self: &Arc<Self>, st: &mut State, i: usize, d: Delivery) {
        let m = &mut st.members[i];
        m.inflight.insert((d.cursor, d.offset), d.clone());
        let _ = m.tx.send(Event::Shared(self.clone(), d));
    }

    /// The group's dispatcher: runs until the last member leaves. After activity (an
    /// append, an ack, a member change) it asks `saver` to store the group's positions
    /// [`SAVE_EVERY`] later if they changed meanwhile.
    pub(crate) async fn run(
        self: Arc<Self>,
        store: Arc<Store>,
        tiers: Option<Arc<Tiers>>,
        saver: mpsc::UnboundedSender<String>,
    ) {
        let stored = Stored {
            store: &store,
            tiers: tiers.as_deref(),
            reader: reader_id(&self.key),
        };
        let mut saved = self.committed();
        let mut due: Option<Instant> = None;
        loop {
            let appended = Arc::new(Notify::new());
            {
                let st = self.lock();
                if st.closed {
                    return;
                }
                for c in &st.cursors {
                    c.log.register(&appended);
                    // Below a tiered partition's local start: woken by segment loads.
                    if c.next < c.log.log_start() {
                        if let Some(pt) = tiers
                            .as_ref()
                            .and_then(|t| t.part(c.log.topic_id, c.log.index))
                        {
                            pt.register(&appended);
                        }
                    }
                }
            }
            self.dispatch(stored);
            let activity = tokio::select! {
                _ = appended.notified() => true,
                _ = self.wake.notified() => true,
                _ = sleep_until(due) => false,
            };
            if activity {
                due.get_or_insert_with(|| Instant::now() + SAVE_EVERY);
            }
            if due.is_some_and(|d| d <= Instant::now()) {
                due = None;
                let now = self.committed();
                if now != saved {
                    saved = now;
                    let _ = saver.send(self.key.clone());
                }
            }
        }
    }
}

/// A group's id as a reader of tiered segments: apart from connections' (`Hub::stored`).
fn reader_id(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() | 1 << 62) & !(1 << 63)
}

async fn sleep_until(d: Option<Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A connection's side of its share groups: the groups it joined, deliveries waiting for
/// room in its window, and the handles of its tickets.
#[derive(Default)]
pub(crate) struct Memberships {
    pub(crate) groups: Vec<Arc<ShareGroup>>,
    pending: VecDeque<(Arc<ShareGroup>, Delivery)>,
    handles: HashMap<u32, (Arc<ShareGroup>, usize)>,
    next: u32,
}

impl Memberships {
    pub(crate) fn add(&mut self, g: Arc<ShareGroup>) {
        if !self.groups.iter().any(|x| Arc::ptr_eq(x, &g)) {
            self.groups.push(g);
        }
    }

    /// Forgets the group `key`; returns whether it was joined.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        let before = self.groups.len();
        self.groups.retain(|g| g.key != key);
        self.groups.len() != before
    }

    pub(crate) fn push(&mut self, g: Arc<ShareGroup>, d: Delivery) {
        self.pending.push_back((g, d));
    }

    /// Whether a waiting delivery could be sent now.
    pub(crate) fn ready(&self, session: &Session) -> bool {
        !self.pending.is_empty() && session.can_send()
    }

    /// Encodes waiting deliveries while the session's window has room.
    pub(crate) fn pump(
        &mut self,
        session: &mut Session,
        conn: u64,
        version: Version,
        out: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let now = records::now_ms();
        while session.can_send() {
            let Some((g, d)) = self.pending.pop_front() else {
                break;
            };
            if !self.groups.iter().any(|x| Arc::ptr_eq(x, &g)) {
                g.done(conn, d.cursor, d.offset, true);
                continue;
            }
            self.next = (self.next + 1) & !SHARED_TICKET;
            let ticket = Ticket {
                cursor: SHARED_TICKET | self.next,
                offset: d.offset,
            };
            let (p, done) = session.deliver_shared(&g.key, &d.message, ticket, now);
            if let Some(p) = p {
                codec::encode(&p, version, out)?;
                crate::metrics::get().mqtt_sent.inc();
            }
            if done.is_some() {
                g.done(conn, d.cursor, d.offset, false);
            } else {
                self.handles.insert(self.next, (g, d.cursor));
            }
        }
        Ok(())
    }

    /// A delivery finished; tells its group. Returns false for a session's own ticket.
    pub(crate) fn done(&mut self, t: Ticket, conn: u64) -> bool {
        if t.cursor & SHARED_TICKET == 0 {
            return false;
        }
        if let Some((g, cursor)) = self.handles.remove(&(t.cursor & !SHARED_TICKET)) {
            g.done(conn, cursor, t.offset, false);
        }
        true
    }
}
