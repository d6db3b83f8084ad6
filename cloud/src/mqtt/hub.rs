//! State shared by every MQTT connection: the topic index (MQTT name -> log topic), the
//! subscription index (filter -> connection), the session registry (online connections
//! and offline persistent sessions), retained messages, and share groups (live ones, and
//! the stored positions of those without members: see `share`).
//!
//! Topics come from the log itself: loaded at start, then learned from
//! [`Log::watch_created`] whoever created them (an MQTT publish, a Kafka CreateTopics or
//! auto-create). A new topic is matched against the subscription index and announced to
//! the matching connections, which open cursors on it from its start: a wildcard
//! subscription sees topics created after it without resubscribing.
//!
//! Delayed wills: [`wills`].

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch, Notify};
use tracing::{debug, info, warn};

use super::cursor::Start;
use super::inbox::{inbox, EventRx, EventTx};
use super::persist::{self, SavedSession, SavedShareGroup};
use super::recent::Recent;
use super::records::{self, Message};
use super::session::{Limits, Session};
use super::share::{Delivery, ShareGroup};
use super::stored::Stored;
use super::topic::{self, FilterIndex, TopicIndex};
use super::{codec::Version, Error, MqttConfig};
use crate::log::partition::PartitionLog;
use crate::log::{Log, NewTopic, TopicError};
use crate::storage::WriteSet;
use crate::tier::Tiers;
use wills::PendingWill;

mod publish;
mod shares;
mod wills;

/// Sent by the hub to one connection.
#[derive(Debug)]
pub(crate) enum Event {
    NewTopic {
        mqtt: Arc<str>,
        log: Arc<str>,
    },
    TakenOver,
    /// The cloud is stopping: store the session, say goodbye, close.
    Stop,
    /// A message of a shared subscription for this member.
    Shared(Arc<ShareGroup>, Delivery),
}

/// A session without a connection: its state machine and its log positions.
pub(crate) struct Detached {
    pub(crate) session: Session,
    /// `(log topic, partition, next offset)`.
    pub(crate) cursors: Vec<(Arc<str>, u32, u64)>,
    /// `(log topic, partition, next offset not yet sent)` of a session loaded from the
    /// store: what lies between a cursor and its mark is sent again with DUP set.
    pub(crate) sent: Vec<(Arc<str>, u32, u64)>,
}

enum Slot {
    Online { conn: u64, gone: Arc<Notify> },
    Offline { state: Box<Detached>, epoch: u64 },
}

/// A share group without members: where it resumes.
struct Parked {
    /// `(log topic, partition, offset)`.
    cursors: Vec<(Arc<str>, u32, u64)>,
    /// When its last member left (ms since the epoch).
    left_ms: u64,
    epoch: u64,
}

/// What [`Hub::attach`] gives a new connection.
pub(crate) struct Attached {
    pub(crate) conn: u64,
    pub(crate) events: EventRx,
    pub(crate) resumed: Option<Detached>,
    /// A stored session was discarded by a clean start (delete it from the store).
    pub(crate) discarded: bool,
}

#[derive(Default)]
struct Inner {
    /// MQTT name -> log name. A log name's MQTT name is its decoding (see [`name_of`]),
    /// except for hashed log names: their recorded aliases are in `hashed`.
    ///
    /// [`name_of`]: Hub::name_of
    topics: TopicIndex<Arc<str>>,
    hashed: HashMap<Arc<str>, Arc<str>>,
    subs: FilterIndex<u64>,
    conns: HashMap<u64, EventTx>,
    sessions: HashMap<String, Slot>,
    retained: TopicIndex<Arc<Message>>,
    /// Share groups by `$share/<group>/<filter>`.
    shares: HashMap<String, Arc<ShareGroup>>,
    /// Share groups without members (until `mqtt.share_group_expiry_secs`).
    parked: HashMap<String, Parked>,
    /// Delayed wills waiting for their time, by client id.
    wills: HashMap<String, PendingWill>,
    next_id: u64,
}

pub(crate) struct Hub {
    pub(crate) log: Arc<Log>,
    /// Tiered partitions' uploaded segments, read below their local start (`stored`).
    tiers: Option<Arc<Tiers>>,
    pub(crate) config: MqttConfig,
    inner: Mutex<Inner>,
    created: Mutex<Option<broadcast::Receiver<Arc<str>>>>,
    /// Share groups whose positions moved (sent by their dispatchers).
    share_saver: mpsc::UnboundedSender<String>,
    /// Orders share group writes: each writes the state current when it holds this.
    share_writes: tokio::sync::Mutex<()>,
    /// Orders the writes of `W|client` of one client against each other and the registry
    /// `Inner::wills` (see [`wills::WillLocks`]).
    will_writes: wills::WillLocks,
    /// Raised once by a clean stop ([`Hub::begin_stop`]): the accept loops end, and
    /// connections not yet registered (or blocked writing) see it.
    stopping: watch::Sender<bool>,
    /// Connection tasks alive ([`Live`]), so a clean stop can wait for them.
    live: watch::Sender<usize>,
}

/// Counts one connection task as alive until dropped (also when its runtime is dropped
/// with the task).
pub(crate) struct Live(Arc<Hub>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Messages of one topic among those appended together, with their indexes.
type TopicGroup<'a> = (&'a str, Vec<Arc<Message>>, Vec<usize>);

/// The MQTT name of a log topic: its reverse mapping, or (`true`) a recorded alias.
fn mqtt_name(log_name: &str, aliases: &HashMap<String, String>) -> Option<(String, bool)> {
    match decoded(log_name) {
        Some(t) => Some((t, false)),
        None => aliases.get(log_name).map(|t| (t.clone(), true)),
    }
}

/// The MQTT name a readable log name decodes to.
fn decoded(log_name: &str) -> Option<String> {
    match common::topic::kafka_to_mqtt(log_name) {
        Ok(common::topic::Decoded::Topic(t)) => Some(t),
        _ => None,
    }
}

impl Inner {
    /// Indexes a log topic under its MQTT name `m` (an `alias`, or its decoding) unless
    /// it is already; returns whether it was new.
    fn add_topic(&mut self, log_name: &Arc<str>, m: &Arc<str>, alias: bool) -> bool {
        if self.topics.get(m) == Some(log_name) {
            return false;
        }
        self.topics.insert(m, log_name.clone());
        if alias {
            self.hashed.insert(log_name.clone(), m.clone());
        }
        true
    }
}

impl Hub {
    pub(crate) async fn open(
        log: Arc<Log>,
        tiers: Option<Arc<Tiers>>,
        config: MqttConfig,
    ) -> Result<Arc<Hub>, Error> {
        let created = log.watch_created();
        let mut inner = Inner::default();
        let aliases: HashMap<String, String> = log.store.topic_aliases()?.into_iter().collect();
        for t in log.all() {
            if let Some((m, alias)) = mqtt_name(&t.name, &aliases) {
                inner.add_topic(&t.name, &m.into(), alias);
            }
        }
        for (topic, v) in log.store.retained()? {
            match persist::decode_retained(&v) {
                Some(m) => {
                    inner.retained.insert(&topic, Arc::new(m));
                }
                None => warn!(topic, "corrupt retained message skipped"),
            }
        }
        let limits = limits(&config);
        let mut expired = Vec::new();
        let mut expired_groups = Vec::new();
        let mut offline = Vec::new();
        for (client, v) in log.store.sessions()? {
            let Some((saved, gone_ms)) = SavedSession::decode(&v) else {
                warn!(client, "corrupt persistent session skipped");
                continue;
            };
            // Expiry counts from the disconnect (from now if the cloud stopped while
            // the client was connected).
            let left = expiry_left(saved.expiry, gone_ms, records::now_ms());
            if left == Some(Duration::ZERO) {
                debug!(client, "session expired while the cloud was down");
                expired.push(client);
                continue;
            }
            let mut session = Session::new(client.clone(), Version::V5, saved.expiry, limits);
            session.subscriptions = saved.subscriptions.into_iter().collect();
            let positions = |list: Vec<(String, u32, u64)>| {
                list.into_iter()
                    .map(|(t, p, o)| (Arc::from(t.as_str()), p, o))
                    .collect()
            };
            let cursors = positions(saved.cursors);
            let sent = positions(saved.sent);
            inner.next_id += 1;
            let epoch = inner.next_id;
            offline.push((client.clone(), left, epoch));
            inner.sessions.insert(
                client,
                Slot::Offline {
                    state: Box::new(Detached {
                        session,
                        cursors,
                        sent,
                    }),
                    epoch,
                },
            );
        }
        let mut parked = Vec::new();
        for (key, v) in log.store.share_groups()? {
            let Some((saved, left_ms)) = SavedShareGroup::decode(&v) else {
                warn!(group = key, "corrupt share group skipped");
                continue;
            };
            // Expiry counts from the last member's leaving (from now if the cloud stopped
            // while the group had members).
            let now = records::now_ms().max(1) as u64;
            let left = expiry_left(config.share_group_expiry_secs, left_ms, now as i64);
            if left == Some(Duration::ZERO) {
                debug!(group = key, "share group expired while the cloud was down");
                expired_groups.push(key);
                continue;
            }
            inner.next_id += 1;
            let epoch = inner.next_id;
            let cursors = saved
                .cursors
                .into_iter()
                .map(|(t, p, o)| (Arc::from(t.as_str()), p, o))
                .collect();
            let left_ms = if left_ms == 0 { now } else { left_ms };
            parked.push((key.clone(), left, epoch));
            inner.parked.insert(
                key,
                Parked {
                    cursors,
                    left_ms,
                    epoch,
                },
            );
        }
        // Armed wills rewritten as timed ones, expired sessions and groups deleted: one
        // write before anything else runs.
        let mut set = WriteSet::default();
        let wills = wills::load_wills(&log, &mut inner, &mut set)?;
        if !set.is_empty() || !expired.is_empty() || !expired_groups.is_empty() {
            for c in &expired {
                set.delete_session(c);
            }
            for g in &expired_groups {
                set.delete_share_group(g);
            }
            log.store.write(set, true).await?;
        }
        info!(
            topics = inner.topics.len(),
            retained = inner.retained.len(),
            sessions = inner.sessions.len(),
            share_groups = inner.parked.len(),
            wills = inner.wills.len(),
            "mqtt view loaded"
        );
        let (share_saver, mut saves) = mpsc::unbounded_channel::<String>();
        let hub = Arc::new(Hub {
            log,
            tiers,
            config,
            inner: Mutex::new(inner),
            created: Mutex::new(Some(created)),
            share_saver,
            share_writes: tokio::sync::Mutex::new(()),
            will_writes: wills::WillLocks::default(),
            stopping: watch::Sender::new(false),
            live: watch::Sender::new(0),
        });
        for (client, left, epoch) in offline {
            if let Some(left) = left {
                hub.clone().expire_later(client, left, epoch);
            }
        }
        for (key, left, epoch) in parked {
            if let Some(left) = left {
                hub.clone().expire_share_later(key, left, epoch);
            }
        }
        for (client, left, epoch) in wills {
            hub.clone().will_later(client, left, epoch);
        }
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            while let Some(key) = saves.recv().await {
                let Some(hub) = weak.upgrade() else { return };
                hub.save_share(&key, false).await;
            }
        });
        Ok(hub)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows topic creation in the log (run once, for the life of the broker).
    pub(crate) async fn watch_topics(self: Arc<Self>) {
        let Some(mut rx) = self
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        loop {
            match rx.recv().await {
                Ok(name) => self.topic_added(&name),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "topic notifications lagged; rescanning topics");
                    for t in self.log.all() {
                        self.topic_added(&t.name);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn topic_added(&self, log_name: &Arc<str>) {
        let aliases = match common::topic::kafka_to_mqtt(log_name) {
            Ok(common::topic::Decoded::Topic(_)) => HashMap::new(),
            _ => self
                .log
                .store
                .topic_aliases()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        let Some((m, alias)) = mqtt_name(log_name, &aliases) else {
            debug!(topic = %log_name, "log topic has no mqtt name");
            return;
        };
        let m: Arc<str> = m.into();
        let mut g = self.lock();
        if !g.add_topic(log_name, &m, alias) {
            return;
        }
        for group in g.shares.values() {
            if topic::matches(&group.filter, &m) {
                for (p, part) in self.partitions(log_name) {
                    group.open(log_name.clone(), Some(m.clone()), p, part, Start::Beginning);
                }
            }
        }
        let mut conns = Vec::new();
        g.subs.matching(&m, &mut conns);
        conns.sort_unstable();
        conns.dedup();
        for c in conns {
            if let Some(tx) = g.conns.get(&c) {
                let _ = tx.send(Event::NewTopic {
                    mqtt: m.clone(),
                    log: log_name.clone(),
                });
            }
        }
    }

    /// The MQTT name of a log topic, if it has one.
    pub(crate) fn name_of(&self, log_name: &str) -> Option<Arc<str>> {
        let Some(m) = decoded(log_name) else {
            return self.lock().hashed.get(log_name).cloned();
        };
        let known = self.lock().topics.get(&m).is_some_and(|l| **l == *log_name);
        known.then(|| m.into())
    }

    /// Registers a connection for `client_id`, taking over (and waiting for) a connection
    /// that holds it, and resuming its offline session unless `clean`.
    pub(crate) async fn attach(&self, client_id: &str, clean: bool) -> Attached {
        loop {
            let wait = {
                let g = self.lock();
                match g.sessions.get(client_id) {
                    Some(Slot::Online { conn, gone }) => {
                        if let Some(tx) = g.conns.get(conn) {
                            let _ = tx.send(Event::TakenOver);
                        }
                        Some((gone.clone(), *conn))
                    }
                    _ => None,
                }
            };
            if let Some((gone, old)) = wait {
                let notified = gone.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let still = matches!(self.lock().sessions.get(client_id), Some(Slot::Online { conn, .. }) if *conn == old);
                if still
                    && tokio::time::timeout(Duration::from_secs(5), notified)
                        .await
                        .is_err()
                {
                    warn!(
                        client_id,
                        "previous connection did not release the session in 5 s; taking it"
                    );
                    let mut g = self.lock();
                    g.sessions.remove(client_id);
                    g.conns.remove(&old);
                }
                continue;
            }
            let mut g = self.lock();
            if matches!(g.sessions.get(client_id), Some(Slot::Online { .. })) {
                continue;
            }
            g.next_id += 1;
            let conn = g.next_id;
            let (tx, events) = inbox();
            if *self.stopping.borrow() {
                // Registered after `begin_stop` told the others: told here.
                let _ = tx.send(Event::Stop);
            }
            g.conns.insert(conn, tx);
            let old = g.sessions.insert(
                client_id.to_string(),
                Slot::Online {
                    conn,
                    gone: Arc::new(Notify::new()),
                },
            );
            let discarded = clean && matches!(old, Some(Slot::Offline { .. }));
            let resumed = match old {
                Some(Slot::Offline { state, .. }) if !clean => Some(*state),
                _ => None,
            };
            for f in resumed.iter().flat_map(|d| d.session.subscriptions.keys()) {
                g.subs.insert(f, conn);
            }
            return Attached {
                conn,
                events,
                resumed,
                discarded,
            };
        }
    }

    /// Starts a clean stop: the accept loops end (closing the listeners), and every
    /// connection is told to store its session and close (see `conn`).
    pub(crate) fn begin_stop(&self) {
        self.stopping.send_replace(true);
        let g = self.lock();
        for tx in g.conns.values() {
            let _ = tx.send(Event::Stop);
        }
    }

    /// Raised when the cloud stops (see [`Hub::begin_stop`]).
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Counts a connection task as alive for as long as the result lives.
    pub(crate) fn live(self: &Arc<Self>) -> Live {
        self.live.send_modify(|n| *n += 1);
        Live(self.clone())
    }

    /// Waits until no connection task is alive, at most `within`; returns how many
    /// still are.
    pub(crate) async fn connections_closed(&self, within: Duration) -> usize {
        let mut rx = self.live.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|n| *n == 0)).await;
        let left = *rx.borrow();
        left
    }

    /// Unregisters a connection. A session with a non-zero expiry stays as `Offline`
    /// (and is persisted by the caller); otherwise it ends.
    pub(crate) fn detach(self: &Arc<Self>, conn: u64, client_id: &str, state: Detached) {
        let mut g = self.lock();
        g.conns.remove(&conn);
        for f in state.session.subscriptions.keys() {
            g.subs.remove(f, &conn);
        }
        let gone = match g.sessions.get(client_id) {
            Some(Slot::Online { conn: c, gone }) if *c == conn => gone.clone(),
            _ => return,
        };
        let expiry = state.session.expiry;
        if expiry == 0 {
            g.sessions.remove(client_id);
        } else {
            g.next_id += 1;
            let epoch = g.next_id;
            g.sessions.insert(
                client_id.to_string(),
                Slot::Offline {
                    state: Box::new(state),
                    epoch,
                },
            );
            drop(g);
            if expiry != u32::MAX {
                let left = Duration::from_secs(u64::from(expiry));
                self.clone()
                    .expire_later(client_id.to_string(), left, epoch);
            }
        }
        gone.notify_waiters();
    }

    fn expire_later(self: Arc<Self>, client: String, left: Duration, epoch: u64) {
        tokio::spawn(async move {
            tokio::time::sleep(left).await;
            let expired = {
                let mut g = self.lock();
                match g.sessions.get(&client) {
                    Some(Slot::Offline { epoch: e, .. }) if *e == epoch => {
                        g.sessions.remove(&client).is_some()
                    }
                    _ => false,
                }
            };
            if expired {
                info!(client, "session expired");
                let mut set = WriteSet::default();
                set.delete_session(&client);
                if let Err(e) = self.log.store.write(set, true).await {
                    warn!(client, cause = %e, "cannot delete expired session");
                }
            }
        });
    }

    /// Adds `filter` for `conn`; returns the existing topics it matches.
    pub(crate) fn subscribe(&self, conn: u64, filter: &str) -> Vec<(Arc<str>, Arc<str>)> {
        let mut g = self.lock();
        g.subs.insert(filter, conn);
        let mut out = Vec::new();
        g.topics.matching(filter, &mut out);
        out.into_iter()
            .map(|(m, l)| (Arc::from(m.as_str()), l))
            .collect()
    }

    /// Makes `conn` a member of the share group `key` (`$share/<group>/<filter>`),
    /// creating the group if needed: where it stopped if it has stored positions (a
    /// partition without one, created since, from its start), else at the end of the log
    /// of every matching topic. A new group's positions are stored before this returns.
    pub(crate) async fn share_join(
        &self,
        conn: u64,
        key: &str,
        filter: &str,
        window: usize,
    ) -> Arc<ShareGroup> {
        let (group, created) = {
            let mut g = self.lock();
            let Some(tx) = g.conns.get(&conn).cloned() else {
                return ShareGroup::new(key, filter);
            };
            let (group, created) = match g.shares.get(key) {
                Some(group) => (group.clone(), false),
                None => {
                    let parked = g.parked.remove(key);
                    let group = ShareGroup::new(key, filter);
                    let mut out = Vec::new();
                    g.topics.matching(filter, &mut out);
                    for (m, l) in out {
                        for (p, part) in self.partitions(&l) {
                            let start = match &parked {
                                None => Start::End,
                                // Beyond the end: the topic was deleted and created
                                // again meanwhile; all of the new one is unseen.
                                Some(k) => k
                                    .cursors
                                    .iter()
                                    .find(|(t, q, _)| *t == l && *q == p)
                                    .filter(|c| c.2 <= part.high_watermark())
                                    .map_or(Start::Beginning, |c| Start::At(c.2)),
                            };
                            group.open(l.clone(), Some(Arc::from(m.as_str())), p, part, start);
                        }
                    }
                    if parked.is_some() {
                        debug!(group = key, "share group resumes from its stored positions");
                    }
                    g.shares.insert(key.to_string(), group.clone());
                    let saver = self.share_saver.clone();
                    let (store, tiers) = (self.log.store.clone(), self.tiers.clone());
                    tokio::spawn(group.clone().run(store, tiers, saver));
                    (group, true)
                }
            };
            group.join(conn, tx, window);
            (group, created)
        };
        if created {
            self.save_share(key, true).await;
        }
        group
    }

    /// Removes `conn` from the share group `key`. The last member's leaving ends the
    /// group's dispatcher; its positions are kept (and stored, durably, before this
    /// returns) for `mqtt.share_group_expiry_secs`.
    pub(crate) async fn share_leave(self: &Arc<Self>, conn: u64, key: &str) {
        let expiry = self.config.share_group_expiry_secs;
        let epoch = {
            let mut g = self.lock();
            let Some(group) = g.shares.get(key).cloned() else {
                return;
            };
            if !group.leave(conn) {
                return;
            }
            g.shares.remove(key);
            g.next_id += 1;
            let epoch = g.next_id;
            let parked = Parked {
                cursors: group.committed(),
                left_ms: records::now_ms().max(1) as u64,
                epoch,
            };
            if expiry > 0 {
                g.parked.insert(key.to_string(), parked);
            }
            epoch
        };
        self.save_share(key, true).await;
        if expiry > 0 && expiry != u32::MAX {
            let left = Duration::from_secs(u64::from(expiry));
            self.clone()
                .expire_share_later(key.to_string(), left, epoch);
        }
    }

    pub(crate) fn unsubscribe(&self, conn: u64, filter: &str) {
        self.lock().subs.remove(filter, &conn);
    }

    /// Existing topics matching `filter` (for a resumed session).
    pub(crate) fn topics_matching(&self, filter: &str) -> Vec<(Arc<str>, Arc<str>)> {
        let mut out = Vec::new();
        self.lock().topics.matching(filter, &mut out);
        out.into_iter()
            .map(|(m, l)| (Arc::from(m.as_str()), l))
            .collect()
    }

    pub(crate) fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        self.lock().retained.matching(filter, &mut out);
        out.into_iter().map(|(_, m)| m).collect()
    }

    /// The partitions of a log topic with their logs.
    pub(crate) fn partitions(&self, log_name: &str) -> Vec<(u32, Arc<PartitionLog>)> {
        let Some(t) = self.log.get(log_name) else {
            return vec![];
        };
        (0..t.partition_count())
            .filter_map(|i| self.log.partition(&t, i as i32).ok().map(|p| (i, p)))
            .collect()
    }

    /// Stores (or, for `None`, deletes) the persistent session of `client`.
    /// `disconnected_ms`: when the client disconnected (0 while it is connected).
    pub(crate) async fn persist_session(
        &self,
        client: &str,
        saved: Option<SavedSession>,
        disconnected_ms: u64,
    ) -> Result<(), Error> {
        let mut set = WriteSet::default();
        match saved {
            Some(s) => set.put_session(client, s.encode(disconnected_ms)),
            None => set.delete_session(client),
        }
        self.log.store.write(set, true).await?;
        Ok(())
    }

    pub(crate) fn limits(&self) -> Limits {
        limits(&self.config)
    }

    /// Where connection `conn`'s cursors read stored batches from.
    pub(crate) fn stored(&self, conn: u64) -> Stored<'_> {
        Stored {
            store: &self.log.store,
            tiers: self.tiers.as_deref(),
            // Apart from Kafka connections' ids, which count up from 1.
            reader: conn | 1 << 63,
        }
    }
}

/// How long a stored session has left: `None` never expires; zero is already expired.
/// `gone_ms` 0 (disconnect time unknown) counts from `now_ms`.
fn expiry_left(expiry: u32, gone_ms: u64, now_ms: i64) -> Option<Duration> {
    if expiry == u32::MAX {
        return None;
    }
    let total = u64::from(expiry) * 1000;
    let elapsed = match gone_ms {
        0 => 0,
        g => (now_ms.max(0) as u64).saturating_sub(g),
    };
    Some(Duration::from_millis(total.saturating_sub(elapsed)))
}

fn saved_group(cursors: &[(Arc<str>, u32, u64)]) -> SavedShareGroup {
    SavedShareGroup {
        cursors: cursors
            .iter()
            .map(|(t, p, o)| (t.to_string(), *p, *o))
            .collect(),
    }
}

fn limits(c: &MqttConfig) -> Limits {
    Limits {
        receive_maximum: c.receive_maximum,
        topic_alias_max: c.topic_alias_maximum,
    }
}

/// FNV-1a: spreads publishers over a multi-partition topic, stable across restarts.
fn fnv(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| {
        (h ^ u32::from(x)).wrapping_mul(0x0100_0193)
    })
}
