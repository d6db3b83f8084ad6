//! Delayed wills (MQTT 5 Will Delay Interval, `Inner::wills`) are stored under `W|client`
//! in the same write as the leaving session, so a restart or a kill keeps them:
//! 1. A connection that leaves with a will whose wait (min(delay, session expiry)) is not
//!    zero stores it with its due time (wall clock) together with its session
//!    ([`Hub::persist_leave`]) and registers it here under a fresh epoch; a timer waits.
//! 2. When due, if still registered under that epoch (its client did not come back), it
//!    is appended to the log, then deleted from the store. A crash between the two
//!    publishes it again after the restart: at least once, as a will may be.
//! 3. A client that connects with the same id cancels it before its CONNACK
//!    ([`Hub::cancel_will`]): unregistered, then deleted durably (with Clean Start, which
//!    ends the session, it is published first).
//! 4. A clean stop ends the timers; the wills stay stored. At start every stored will is
//!    registered and timed again from its due time; overdue ones are published at once.
//!
//! A connection's will is also stored while the connection is open: *armed*
//! ([`Hub::arm_will`], before the CONNACK, with the wait it will have and the connection's
//! id), so a crash of the cloud, which loses the connection without a DISCONNECT, does
//! not lose the will. At start an armed will is due its wait after the start (the
//! connection was lost with the previous process; when exactly is unknown) and is
//! rewritten as a timed will before anything else runs, so every armed will in the store
//! belongs to a connection of the running process. A connection that leaves replaces its
//! armed will: timed (step 1), or deleted once published or discarded by a DISCONNECT
//! ([`Hub::disarm_will`], only the entry this connection armed). A will to a memory
//! topic is not armed ([`Hub::will_in_memory`]): like the topic's records, it lives in
//! this process only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, warn};

use super::{Hub, Inner};
use crate::log::{Log, StorageMode};
use crate::mqtt::persist::{SavedSession, StoredWill, WillDue};
use crate::mqtt::records::{self, Message};
use crate::mqtt::Error;
use crate::storage::WriteSet;

/// How many locks the clients' will writes are spread over.
const WILL_LOCKS: usize = 256;

/// Orders the writes of `W|client` of one client: a will is put and registered under its
/// client's lock, and a delete checks what is stored and registered and deletes under it
/// (so a late delete never removes a newer will). Each holds the lock until its write is
/// durable. Client ids are spread over [`WILL_LOCKS`] locks, so the wills of different
/// clients are written at the same time and share group commits: with one lock for all
/// clients, a reconnect storm of clients with wills paid one fsync per connection in a
/// row.
pub(super) struct WillLocks(Box<[tokio::sync::Mutex<Armed>]>);

/// The clients of one lock whose stored will is armed, with the connection that armed
/// it: what `W|client` holds, kept under the lock that orders its writes, so a leaving
/// connection knows without a store read (a RocksDB get and a decode, 13% of the cloud's
/// instructions in a reconnect storm) whether the stored will is still its own. Every
/// armed will in the store belongs to this process (see the module docs), so it starts
/// empty.
#[derive(Default)]
pub(super) struct Armed(HashMap<Box<str>, u64>);

impl Armed {
    /// The connection whose armed will is stored for `client`, if one is.
    fn by(&self, client: &str) -> Option<u64> {
        self.0.get(client).copied()
    }

    /// `client`'s stored will is now armed by `conn`, or (`None`) not armed any more.
    fn set(&mut self, client: &str, conn: Option<u64>) {
        match conn {
            Some(c) => self.0.insert(client.into(), c),
            None => self.0.remove(client),
        };
    }
}

impl Default for WillLocks {
    fn default() -> Self {
        Self(
            (0..WILL_LOCKS)
                .map(|_| tokio::sync::Mutex::new(Armed::default()))
                .collect(),
        )
    }
}

impl WillLocks {
    /// Waits for `client`'s turn to write its will.
    async fn turn(&self, client: &str) -> tokio::sync::MutexGuard<'_, Armed> {
        self.0[self.index(client)].lock().await
    }

    fn index(&self, client: &str) -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(client);
        (h % self.0.len() as u64) as usize
    }
}

/// A delayed will waiting for its time (see the module docs).
pub(super) struct PendingWill {
    message: Message,
    /// Its timer publishes it only if it is still registered under this epoch.
    epoch: u64,
}

impl Hub {
    /// Stores a leaving connection's persistent session (or, for `None`, deletes it) and,
    /// in the same write, its delayed will (`Some((message, wait))`), which is then
    /// registered and timed (see the module docs). Returns once the write is durable.
    pub(crate) async fn persist_leave(
        self: &Arc<Self>,
        client: &str,
        saved: Option<SavedSession>,
        disconnected_ms: u64,
        will: Option<(Message, Duration)>,
    ) -> Result<(), Error> {
        let Some((message, wait)) = will else {
            return self.persist_session(client, saved, disconnected_ms).await;
        };
        let mut set = WriteSet::default();
        match saved {
            Some(s) => set.put_session(client, s.encode(disconnected_ms)),
            None => set.delete_session(client),
        }
        let stored = StoredWill {
            due: WillDue::At(
                (records::now_ms().max(0) as u64).saturating_add(wait.as_millis() as u64),
            ),
            message,
        };
        match stored.encode() {
            Ok(v) => set.put_will(client, v),
            // Not stored (the session still is): timed in this process only.
            Err(e) => warn!(client, cause = %e, "cannot encode a delayed will"),
        }
        let mut turn = self.will_writes.turn(client).await;
        let written = self.log.store.write(set, true).await;
        if written.is_ok() {
            turn.set(client, None); // replaced by the timed will
        }
        // Timed even if the write failed: the will is still due in this process.
        let epoch = register(&mut self.lock(), client.to_string(), stored.message);
        debug!(
            client,
            wait_ms = wait.as_millis() as u64,
            "delayed will stored"
        );
        self.clone().will_later(client.to_string(), wait, epoch);
        written.map_err(Error::from)
    }

    /// A client connected: cancels its pending delayed will (unregistered, then deleted
    /// durably before this returns). With `clean` (Clean Start ends its session, and a
    /// will is due when its session ends) the will is published first (and stays stored
    /// if that fails, for a restart to publish).
    pub(crate) async fn cancel_will(&self, client: &str, clean: bool) {
        let Some(pending) = self.lock().wills.remove(client) else {
            return;
        };
        if clean {
            if !self.publish_will(client, pending.message).await {
                return; // kept stored: a restart publishes it
            }
        } else {
            debug!(client, "delayed will cancelled by a reconnect");
        }
        self.forget_will(client).await;
    }

    /// Deletes the stored will of `client`, unless a newer one is registered or a
    /// connection of this client id has armed its own since.
    async fn forget_will(&self, client: &str) {
        let mut turn = self.will_writes.turn(client).await;
        if self.lock().wills.contains_key(client) || turn.by(client).is_some() {
            return;
        }
        self.delete_will(client, &mut turn).await;
    }

    /// Deletes `W|client` durably; `armed` is the client's `will_writes` turn.
    async fn delete_will(&self, client: &str, armed: &mut Armed) {
        let mut set = WriteSet::default();
        set.delete_will(client);
        match self.log.store.write(set, true).await {
            Ok(()) => armed.set(client, None),
            Err(e) => warn!(client, cause = %e, "cannot delete a stored will"),
        }
    }

    /// Stores the will of the open connection `conn` of `client`, armed: due `wait` after
    /// the connection is lost (see the module docs). Returns once the write is durable.
    pub(crate) async fn arm_will(
        &self,
        client: &str,
        conn: u64,
        message: &Message,
        wait: Duration,
    ) -> Result<(), Error> {
        let stored = StoredWill {
            due: WillDue::Armed {
                wait_ms: wait.as_millis() as u64,
                conn,
            },
            message: message.clone(),
        };
        let mut set = WriteSet::default();
        set.put_will(client, stored.encode()?);
        let mut turn = self.will_writes.turn(client).await;
        self.log.store.write(set, true).await?;
        turn.set(client, Some(conn));
        Ok(())
    }

    /// Whether a will to MQTT topic `topic` is kept in this process only while its
    /// connection is open (not armed in the store): its topic is a memory topic, or would
    /// be created as one (`mqtt.topic_modes`, else `storage.default_mode`). Such a topic's
    /// records do not outlive the process, and neither does the will: it is published
    /// when the connection drops, but a crash of the cloud takes it along, as Mosquitto
    /// does; the CONNACK waits for no fsync.
    pub(crate) fn will_in_memory(&self, topic: &str) -> bool {
        let Ok(log_name) = common::topic::mqtt_to_kafka(topic) else {
            return false;
        };
        let mode = match self.log.get(&log_name) {
            Some(t) => t.mode(),
            None => match self.config.mode_of(topic) {
                Some(m) => StorageMode::parse(m).unwrap_or(StorageMode::Persistent),
                None => self.log.default_mode(),
            },
        };
        mode == StorageMode::Memory
    }

    /// Deletes the will that connection `conn` armed, once it is published or discarded;
    /// an entry stored since (a delayed will, or a newer connection's armed will) stays.
    pub(crate) async fn disarm_will(&self, client: &str, conn: u64) {
        let mut turn = self.will_writes.turn(client).await;
        if turn.by(client) == Some(conn) {
            self.delete_will(client, &mut turn).await;
        }
    }

    /// Appends a will message now (its time set to now); returns whether it was.
    pub(crate) async fn publish_will(&self, client: &str, mut m: Message) -> bool {
        m.timestamp_ms = records::now_ms();
        let key = Bytes::copy_from_slice(client.as_bytes());
        match self.append(Arc::new(m), &key).await {
            Ok(()) => true,
            Err(e) => {
                warn!(client, cause = %e, "will message not published");
                false
            }
        }
    }

    /// Publishes the will of `client` after `left` if it is still registered under
    /// `epoch` then, and deletes it from the store once published (not if the append
    /// failed: a restart tries again).
    pub(super) fn will_later(self: Arc<Self>, client: String, left: Duration, epoch: u64) {
        tokio::spawn(async move {
            tokio::time::sleep(left).await;
            let message = {
                let mut g = self.lock();
                match g.wills.get(&client) {
                    Some(p) if p.epoch == epoch => g.wills.remove(&client).map(|p| p.message),
                    _ => None,
                }
            };
            let Some(m) = message else { return };
            if self.publish_will(&client, m).await {
                debug!(client, "delayed will published");
                self.forget_will(&client).await;
            }
        });
    }
}

/// Registers every stored will in `inner`; returns `(client, time left, epoch)` for each
/// (zero for an overdue one). An armed will (its connection lost with the previous
/// process) is due its wait from now: `set` gets it rewritten as a timed will, for the
/// caller to write before anything else runs. Corrupt ones are skipped.
pub(super) fn load_wills(
    log: &Log,
    inner: &mut Inner,
    set: &mut WriteSet,
) -> Result<Vec<(String, Duration, u64)>, Error> {
    let now = records::now_ms().max(0) as u64;
    let mut out = Vec::new();
    for (client, v) in log.store.wills()? {
        let mut stored = match StoredWill::decode(&v) {
            Ok(w) => w,
            Err(e) => {
                warn!(client, cause = %e, "corrupt stored will skipped");
                continue;
            }
        };
        let due_ms = match stored.due {
            WillDue::At(due_ms) => due_ms,
            WillDue::Armed { wait_ms, .. } => {
                debug!(
                    client,
                    wait_ms, "will of a connection lost with the restart"
                );
                let due_ms = now.saturating_add(wait_ms);
                stored.due = WillDue::At(due_ms);
                set.put_will(&client, stored.encode()?);
                due_ms
            }
        };
        let left = Duration::from_millis(due_ms.saturating_sub(now));
        let epoch = register(inner, client.clone(), stored.message);
        out.push((client, left, epoch));
    }
    Ok(out)
}

/// Registers `message` as the pending will of `client` under a fresh epoch (replacing
/// any earlier one, whose timer then finds a newer epoch and does nothing).
fn register(inner: &mut Inner, client: String, message: Message) -> u64 {
    inner.next_id += 1;
    let epoch = inner.next_id;
    inner.wills.insert(client, PendingWill { message, epoch });
    epoch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::MqttConfig;
    use crate::storage::{Store, SyncPolicy};
    use rumqttc::v5::mqttbytes::QoS;

    const TOPIC: &str = "w/status";

    fn will(payload: &'static [u8]) -> Message {
        Message {
            topic: TOPIC.into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            props: None,
            timestamp_ms: 0,
        }
    }

    fn session() -> Option<SavedSession> {
        Some(SavedSession {
            expiry: 3600,
            ..Default::default()
        })
    }

    async fn open(dir: &std::path::Path) -> Arc<Hub> {
        let store = Arc::new(Store::open(dir, SyncPolicy::Group).expect("store"));
        let log = Arc::new(Log::open(store).expect("log"));
        Hub::open(log, None, MqttConfig::default())
            .await
            .expect("hub")
    }

    /// Payloads of the wills appended to [`TOPIC`], in log order.
    fn published(hub: &Hub) -> Vec<Bytes> {
        let name = common::topic::mqtt_to_kafka(TOPIC).expect("name");
        let mut out = Vec::new();
        for (_, part) in hub.partitions(&name) {
            let read = part.read(&hub.log.store, 0, 1 << 20).expect("read");
            for b in &read.batches {
                let stored = records::decode(b, 0, None).expect("decode");
                out.extend(stored.into_iter().map(|s| s.message.payload));
            }
        }
        out
    }

    /// Waits until the stored will of `client` is gone (deleted once published).
    async fn wait_until_deleted(hub: &Hub, client: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stored_clients(hub).iter().any(|c| c == client) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the will of {client} was not published"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn stored_clients(hub: &Hub) -> Vec<String> {
        let wills = hub.log.store.wills().expect("wills");
        wills.into_iter().map(|(c, _)| c).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leave_stores_will_with_session_and_reconnect_cancels_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = open(dir.path()).await;
        let wait = Duration::from_secs(3600);
        let now = records::now_ms() as u64;
        hub.persist_leave("c", session(), now, Some((will(b"gone"), wait)))
            .await
            .expect("leave");
        assert!(hub.log.store.session("c").expect("session").is_some());
        let v = hub.log.store.wills().expect("wills");
        assert_eq!(v.len(), 1);
        let stored = StoredWill::decode(&v[0].1).expect("decode");
        assert_eq!(stored.message.payload, Bytes::from_static(b"gone"));
        assert!(
            matches!(stored.due, WillDue::At(due) if due >= now + 3_600_000),
            "due after the wait"
        );
        hub.cancel_will("c", false).await;
        assert!(stored_clients(&hub).is_empty(), "deleted by the reconnect");
        assert!(
            published(&hub).is_empty(),
            "a cancelled will is not published"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clean_start_publishes_the_pending_will_then_deletes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = open(dir.path()).await;
        let wait = Duration::from_secs(3600);
        hub.persist_leave("c", session(), 1, Some((will(b"ended"), wait)))
            .await
            .expect("leave");
        hub.cancel_will("c", true).await;
        assert_eq!(published(&hub), vec![Bytes::from_static(b"ended")]);
        assert!(stored_clients(&hub).is_empty());
        hub.cancel_will("c", true).await;
        assert_eq!(published(&hub).len(), 1, "published once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_start_overdue_wills_are_published_and_later_ones_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), SyncPolicy::Group).expect("store"));
        let now = records::now_ms() as u64;
        let mut set = WriteSet::default();
        for (client, due_ms, payload) in [
            ("overdue", now - 1000, &b"late"[..]),
            ("later", now + 3_600_000, &b"not-yet"[..]),
        ] {
            let message = Message {
                payload: Bytes::copy_from_slice(payload),
                ..will(b"")
            };
            let due = WillDue::At(due_ms);
            let v = StoredWill { due, message }.encode().expect("encode");
            set.put_will(client, v);
        }
        set.put_will("corrupt", vec![9, 9]);
        store.write(set, true).await.expect("write");
        let log = Arc::new(Log::open(store).expect("log"));
        let hub = Hub::open(log, None, MqttConfig::default())
            .await
            .expect("hub");
        // The overdue will is published, then deleted: wait for the delete.
        wait_until_deleted(&hub, "overdue").await;
        assert_eq!(published(&hub), vec![Bytes::from_static(b"late")]);
        assert_eq!(stored_clients(&hub), vec!["corrupt", "later"]);
        hub.cancel_will("later", false).await;
        assert_eq!(stored_clients(&hub), vec!["corrupt"]);
        assert_eq!(published(&hub).len(), 1);
    }

    /// A hub whose client `c` has a will armed by connection 1, and that will's wait.
    async fn armed_by_one(dir: &std::path::Path) -> (Arc<Hub>, Duration) {
        let hub = open(dir).await;
        let wait = Duration::from_secs(60);
        hub.arm_will("c", 1, &will(b"one"), wait)
            .await
            .expect("arm");
        (hub, wait)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_armed_will_is_deleted_only_by_its_own_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (hub, wait) = armed_by_one(dir.path()).await;
        // A newer connection of the same client id arms its own will.
        hub.arm_will("c", 2, &will(b"two"), wait)
            .await
            .expect("arm");
        hub.disarm_will("c", 1).await;
        assert_eq!(
            stored_clients(&hub),
            vec!["c"],
            "not connection 1's entry any more"
        );
        // A delayed will published meanwhile does not delete an armed one.
        hub.forget_will("c").await;
        assert_eq!(stored_clients(&hub), vec!["c"]);
        hub.disarm_will("c", 2).await;
        assert!(stored_clients(&hub).is_empty());
        assert!(published(&hub).is_empty(), "nothing published");
    }

    /// A timed will stored over a connection's armed one (its session left with a will
    /// delay) is not deleted by that connection's late disarm: what the store holds is
    /// tracked in memory, and must follow every write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timed_will_stored_over_an_armed_one_survives_a_late_disarm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (hub, wait) = armed_by_one(dir.path()).await;
        hub.persist_leave("c", session(), 1, Some((will(b"one"), wait)))
            .await
            .expect("leave");
        hub.disarm_will("c", 1).await;
        let stored = StoredWill::decode(&hub.log.store.will("c").expect("get").expect("some"))
            .expect("decode");
        assert!(matches!(stored.due, WillDue::At(_)), "{:?}", stored.due);
    }

    /// One client's will writes wait for each other; other clients' do not wait for them
    /// (before, one lock for all clients made a reconnect storm one fsync per connection).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn will_writes_wait_only_for_the_same_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = open(dir.path()).await;
        let wait = Duration::from_secs(60);
        let other = (0..)
            .map(|i| format!("b{i}"))
            .find(|b| hub.will_writes.index(b) != hub.will_writes.index("a"))
            .expect("another lock");
        let held = hub.will_writes.turn("a").await;
        tokio::time::timeout(
            Duration::from_secs(30),
            hub.arm_will(&other, 1, &will(b"b"), wait),
        )
        .await
        .expect("another client's write does not wait")
        .expect("arm");
        let a = will(b"a");
        let same = hub.arm_will("a", 2, &a, wait);
        tokio::pin!(same);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut same)
                .await
                .is_err(),
            "the same client's write waits for the turn"
        );
        drop(held);
        same.await.expect("arm");
        assert_eq!(stored_clients(&hub), vec!["a".to_string(), other]);
    }

    /// A will armed by a connection that the previous process had open (lost with a
    /// crash) is stored as due its wait after the start, and published then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_start_an_armed_will_is_due_after_its_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let hub = open(dir.path()).await;
            hub.arm_will("now", 1, &will(b"at-once"), Duration::ZERO)
                .await
                .expect("arm");
            hub.arm_will("later", 2, &will(b"in-an-hour"), Duration::from_secs(3600))
                .await
                .expect("arm");
        }
        let before = records::now_ms() as u64;
        let hub = open(dir.path()).await;
        let stored = StoredWill::decode(&hub.log.store.will("later").expect("get").expect("some"))
            .expect("decode");
        assert!(
            matches!(stored.due, WillDue::At(due) if due >= before + 3_600_000),
            "rewritten as due an hour after the start: {:?}",
            stored.due
        );
        wait_until_deleted(&hub, "now").await;
        assert_eq!(published(&hub), vec![Bytes::from_static(b"at-once")]);
        assert_eq!(stored_clients(&hub), vec!["later"]);
    }
}
