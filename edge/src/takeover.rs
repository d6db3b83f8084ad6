//! Reconnects with a client id that is still connected, ordered for rumqttd's router.
//!
//! rumqttd 0.20 (`router/routing.rs`, `handle_new_connection`) replaces a connection whose
//! client id connects again by removing it from its slab, and inserts the new connection,
//! which then usually gets the same connection id. When the old connection ended because
//! its socket closed, its link task sends `Event::Disconnect` with that id
//! (`server/broker.rs`, `remote`); if the router reads it after the new CONNECT, it closes
//! the *new* connection. A device that drops its connection and reconnects at once (a
//! camera after a network blip) was disconnected again, often before its CONNACK.
//!
//! The ingest codec sees both connections, so it orders them: a CONNECT whose client id
//! has another connection still alive in this process waits until that connection's codec
//! is dropped (rumqttd drops it only after queueing the old `Disconnect` for the router),
//! so the router always reads the old `Disconnect` first. A half-open old connection
//! (its socket still looks alive) is not waited for beyond [`MAX_WAIT`]; the router then
//! replaces it as before, and that old link ends with a router error, which sends no
//! `Disconnect`. Test: `test_reconnect_with_the_same_client_id_at_once`.
//!
//! The same slab reuse bites any two connections when the first one ends with a
//! DISCONNECT packet: the router removes that connection when it reads the packet, so its
//! id is free at once, but the link task runs on until it sees the socket close, and then
//! usually sends `Event::Disconnect` with the old id as well. A CONNECT registered in
//! between (the next `mosquitto_pub` of a script, a camera reconnecting under another
//! id) gets that id and is closed by the stale event, often before its CONNACK: measured
//! 16 (3.1.1) and 10 (5) of 500 disconnect-then-connect pairs on loopback, none since.
//! [`Order`] puts every CONNECT and every DISCONNECT the codecs pass in one sequence and
//! makes each wait for the other kind's earlier entries (at most [`MAX_WAIT`]; never for
//! the connection's own CONNECT):
//!
//! - a CONNECT waits until every connection whose DISCONNECT came earlier is dropped (its
//!   stale `Disconnect`, if any, is then queued before this `Connect`);
//! - a DISCONNECT waits until every earlier CONNECT is registered (its CONNACK written),
//!   so no connect can be registered after this DISCONNECT frees an id but before the
//!   link's stale event.
//!
//! Only earlier entries are waited for, so neither kind waits on a stream of the other.
//! A DISCONNECT the router sends itself (a protocol error) frees the id before the codec
//! sees it; it is only entered so that later CONNECTs wait for that link to end. Test:
//! `test_connect_right_after_a_disconnect_is_kept`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

/// Longest a CONNECT waits for the previous connection of its client id to end.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// Connections alive per client id.
#[derive(Default)]
pub struct LiveIds {
    ids: Mutex<HashMap<Bytes, usize>>,
    gone: Condvar,
}

impl LiveIds {
    /// Whether another connection of `id` is alive.
    pub fn busy(&self, id: &Bytes) -> bool {
        self.lock().get(id).is_some_and(|n| *n > 0)
    }

    /// Waits until no other connection of `id` is alive, at most `max`, then counts this
    /// one. Returns whether the wait ran out (a half-open previous connection).
    pub fn enter(&self, id: &Bytes, max: Duration) -> bool {
        let (mut ids, timed_out) = wait_while(&self.gone, self.lock(), max, |ids| {
            ids.get(id).is_some_and(|n| *n > 0)
        });
        *ids.entry(id.clone()).or_default() += 1;
        timed_out
    }

    /// A connection counted by [`LiveIds::enter`] ended.
    pub fn leave(&self, id: &Bytes) {
        let mut ids = self.lock();
        if let Some(n) = ids.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                ids.remove(id);
            }
        }
        drop(ids);
        self.gone.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Bytes, usize>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The CONNECTs and DISCONNECTs passed to rumqttd's router, in one sequence.
#[derive(Default)]
pub struct Order {
    state: Mutex<Entries>,
    changed: Condvar,
}

#[derive(Default)]
struct Entries {
    next: u64,
    /// CONNECTs passed and not yet registered by the router.
    connecting: BTreeSet<u64>,
    /// DISCONNECTs passed whose connection is not dropped yet.
    closing: BTreeSet<u64>,
}

/// Which entry: a CONNECT or a DISCONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Open from the CONNECT until its CONNACK is written (or the connection drops).
    Connect,
    /// Open from the DISCONNECT until the connection drops.
    Disconnect,
}

impl Entries {
    fn set(&mut self, kind: Kind) -> &mut BTreeSet<u64> {
        match kind {
            Kind::Connect => &mut self.connecting,
            Kind::Disconnect => &mut self.closing,
        }
    }

    /// Whether an entry of the other kind older than `ticket` is open, other than `own`
    /// (the connection's own CONNECT, for its DISCONNECT).
    fn blocked(&mut self, kind: Kind, ticket: u64, own: Option<u64>) -> bool {
        let other = match kind {
            Kind::Connect => Kind::Disconnect,
            Kind::Disconnect => Kind::Connect,
        };
        self.set(other).range(..ticket).any(|&t| Some(t) != own)
    }
}

impl Order {
    /// Enters a CONNECT or DISCONNECT; returns its ticket and whether it must
    /// [`Order::wait`] before rumqttd sees the packet. `own`: the connection's own entry
    /// of the other kind, never waited for (a client may send CONNECT and DISCONNECT in
    /// one segment: its DISCONNECT must not wait for its own CONNACK, which comes only
    /// after the codec has returned both).
    pub fn enter(&self, kind: Kind, own: Option<u64>) -> (u64, bool) {
        let mut e = self.lock();
        let ticket = e.next;
        e.next += 1;
        e.set(kind).insert(ticket);
        let blocked = e.blocked(kind, ticket, own);
        (ticket, blocked)
    }

    /// Waits until no entry of the other kind older than `ticket` (but `own`) is open,
    /// at most `max`. Returns whether the wait ran out.
    pub fn wait(&self, kind: Kind, ticket: u64, own: Option<u64>, max: Duration) -> bool {
        wait_while(&self.changed, self.lock(), max, |e| {
            e.blocked(kind, ticket, own)
        })
        .1
    }

    /// Closes an entry: its CONNACK was written, or its connection dropped.
    pub fn leave(&self, kind: Kind, ticket: u64) {
        if self.lock().set(kind).remove(&ticket) {
            self.changed.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Waits on `cv` while `blocked`, at most `max`; returns the guard and whether the wait
/// ran out (a poisoned lock is taken over: the state is counters, valid at any point).
fn wait_while<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    max: Duration,
    mut blocked: impl FnMut(&mut T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    let (guard, result) = cv
        .wait_timeout_while(guard, max, |t| blocked(t))
        .unwrap_or_else(|p| p.into_inner());
    (guard, result.timed_out())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_connect_waits_for_the_previous_connection_of_its_id() {
        let live = Arc::new(LiveIds::default());
        let id = Bytes::from_static(b"cam");
        assert!(!live.enter(&id, MAX_WAIT));
        assert!(live.busy(&id));
        let left = Arc::new(AtomicBool::new(false));
        let (l2, id2, left2) = (live.clone(), id.clone(), left.clone());
        let second = std::thread::spawn(move || {
            let timed_out = l2.enter(&id2, Duration::from_secs(10));
            // Entered only after the first connection left.
            (timed_out, left2.load(Ordering::SeqCst))
        });
        // Give the second connection time to park; it cannot get in while the first
        // is alive, however long it is given (no timing is asserted: on a loaded machine
        // the thread may not even have started).
        std::thread::sleep(Duration::from_millis(100));
        assert!(!second.is_finished());
        left.store(true, Ordering::SeqCst);
        live.leave(&id);
        assert_eq!(second.join().expect("join"), (false, true));
        // Other ids never wait; a half-open previous connection is waited for at most `max`.
        assert!(!live.enter(&Bytes::from_static(b"other"), Duration::ZERO));
        assert!(live.enter(&id, Duration::from_millis(20)));
        live.leave(&id);
        live.leave(&id);
        assert!(!live.busy(&id));
    }

    #[test]
    fn connects_and_disconnects_wait_for_the_earlier_entries_of_the_other_kind() {
        use Kind::{Connect, Disconnect};
        let order = Arc::new(Order::default());
        // Nothing open: nobody waits.
        let (c0, blocked) = order.enter(Connect, None);
        assert!(!blocked);
        // A DISCONNECT after an unregistered CONNECT waits for its CONNACK...
        let (d1, blocked) = order.enter(Disconnect, None);
        assert!(blocked);
        // ...and a CONNECT after that DISCONNECT waits for that connection to drop, but
        // not for the earlier CONNECT (same kind).
        let (c2, blocked) = order.enter(Connect, None);
        assert!(blocked);
        let released = Arc::new(AtomicBool::new(false));
        let (o2, r2) = (order.clone(), released.clone());
        let waiter = std::thread::spawn(move || {
            let timed_out = o2.wait(Disconnect, d1, None, Duration::from_secs(30));
            (timed_out, r2.load(Ordering::SeqCst))
        });
        // However long it is given, the DISCONNECT waits while the CONNECT is open (no
        // timing is asserted: the thread may not even have started).
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished());
        released.store(true, Ordering::SeqCst);
        order.leave(Connect, c0);
        // Woken by the CONNACK, not by the deadline.
        assert_eq!(waiter.join().expect("join"), (false, true));
        // The later CONNECT still waits for the DISCONNECT's connection, at most `max`.
        assert!(order.wait(Connect, c2, None, Duration::from_millis(20)));
        order.leave(Disconnect, d1);
        assert!(!order.wait(Connect, c2, None, Duration::ZERO));
        // Neither waits for a later entry of the other kind.
        let (d3, blocked) = order.enter(Disconnect, None);
        assert!(blocked, "c2 is still connecting");
        let (c4, blocked) = order.enter(Connect, None);
        assert!(blocked, "d3 is still open");
        order.leave(Connect, c2);
        assert!(
            !order.wait(Disconnect, d3, None, Duration::ZERO),
            "c4 came later"
        );
        order.leave(Disconnect, d3);
        assert!(!order.wait(Connect, c4, None, Duration::ZERO));
        // Leaving twice (CONNACK, then drop) is harmless.
        order.leave(Connect, c4);
        order.leave(Connect, c4);
        assert!(!order.enter(Disconnect, None).1);
    }

    #[test]
    fn a_disconnect_does_not_wait_for_its_own_connect() {
        use Kind::{Connect, Disconnect};
        let order = Order::default();
        // CONNECT and DISCONNECT of one client in one segment: its CONNACK can only come
        // after both are decoded, so its DISCONNECT must not wait for it...
        let (own, _) = order.enter(Connect, None);
        let (d, blocked) = order.enter(Disconnect, Some(own));
        assert!(!blocked);
        assert!(!order.wait(Disconnect, d, Some(own), Duration::ZERO));
        order.leave(Connect, own);
        order.leave(Disconnect, d);
        // ...but still for another client's earlier CONNECT.
        let (other, _) = order.enter(Connect, None);
        let (own2, _) = order.enter(Connect, None);
        let (d2, blocked) = order.enter(Disconnect, Some(own2));
        assert!(blocked);
        order.leave(Connect, other);
        assert!(!order.wait(Disconnect, d2, Some(own2), Duration::ZERO));
        order.leave(Connect, own2);
        order.leave(Disconnect, d2);
        assert!(!order.enter(Connect, None).1);
    }
}
