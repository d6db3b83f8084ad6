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

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

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
        let deadline = Instant::now() + max;
        let mut ids = self.lock();
        let mut timed_out = false;
        while ids.get(id).is_some_and(|n| *n > 0) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                timed_out = true;
                break;
            }
            ids = self
                .gone
                .wait_timeout(ids, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, usize>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }
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
}
