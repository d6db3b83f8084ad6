//! A connection's inbox of hub events: unbounded, many senders (the hub, share group
//! dispatchers), one receiver (the connection's loop).
//!
//! tokio's unbounded channel allocates its first block of 32 slots when it is created:
//! about 1.9 KB per channel of [`Event`]s, measured, paid by every connection although
//! events are rare (a new topic matching a wildcard, a takeover, the stop, a shared
//! delivery). This inbox allocates a queue only while events wait in it, so an idle
//! connection costs one small allocation here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::hub::Event;

struct Shared {
    /// Waiting events, and whether the receiver is gone.
    queue: Mutex<(VecDeque<Event>, bool)>,
    /// Live senders: the receiver sees the end once they are all gone and the queue is
    /// empty.
    senders: AtomicUsize,
    /// Wakes the receiver (a wake-up with nobody waiting is kept for the next wait).
    wake: Notify,
}

/// Sends events to one connection.
pub(crate) struct EventTx(Arc<Shared>);

/// The connection's end.
pub(crate) struct EventRx(Arc<Shared>);

/// A new inbox.
pub(crate) fn inbox() -> (EventTx, EventRx) {
    let shared = Arc::new(Shared {
        queue: Mutex::new((VecDeque::new(), false)),
        senders: AtomicUsize::new(1),
        wake: Notify::new(),
    });
    (EventTx(shared.clone()), EventRx(shared))
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<Event>, bool)> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EventTx {
    /// Queues `event`; gives it back if the connection is gone.
    pub(crate) fn send(&self, event: Event) -> Result<(), Event> {
        {
            let mut q = self.0.lock();
            if q.1 {
                return Err(event);
            }
            q.0.push_back(event);
        }
        self.0.wake.notify_one();
        Ok(())
    }
}

impl Clone for EventTx {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        EventTx(self.0.clone())
    }
}

impl Drop for EventTx {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake.notify_one();
        }
    }
}

impl EventRx {
    /// The next event; `None` once every sender is gone and nothing is queued.
    /// Cancel safe: an event is taken only by the poll that returns it.
    pub(crate) async fn recv(&mut self) -> Option<Event> {
        loop {
            {
                let mut q = self.0.lock();
                if let Some(e) = q.0.pop_front() {
                    if q.0.is_empty() && q.0.capacity() > 0 {
                        // Back to no allocation while nothing waits.
                        q.0 = VecDeque::new();
                    }
                    return Some(e);
                }
                if self.0.senders.load(Ordering::Acquire) == 0 {
                    return None;
                }
            }
            self.0.wake.notified().await;
        }
    }
}

impl Drop for EventRx {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.1 = true;
        q.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn events_arrive_in_order_then_the_end_once_every_sender_is_gone() {
        let (tx, mut rx) = inbox();
        let tx2 = tx.clone();
        tx.send(Event::Stop).unwrap();
        tx2.send(Event::TakenOver).unwrap();
        drop(tx);
        assert!(matches!(rx.recv().await, Some(Event::Stop)));
        drop(tx2);
        // Queued before the last sender left: still delivered, then the end.
        assert!(matches!(rx.recv().await, Some(Event::TakenOver)));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_and_by_the_last_drop() {
        let (tx, mut rx) = inbox();
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        tx.send(Event::Stop).unwrap();
        drop(tx);
        let (first, end) = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("woken")
            .expect("no panic");
        assert!(matches!(first, Some(Event::Stop)));
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn a_send_to_a_dropped_receiver_gives_the_event_back() {
        let (tx, rx) = inbox();
        drop(rx);
        assert!(matches!(tx.send(Event::Stop), Err(Event::Stop)));
    }

    /// A receive cancelled while it waits (the connection's `select!` took another
    /// branch) loses nothing.
    #[tokio::test]
    async fn a_cancelled_receive_loses_nothing() {
        let (tx, mut rx) = inbox();
        assert!(tokio::time::timeout(Duration::from_millis(10), rx.recv())
            .await
            .is_err());
        tx.send(Event::TakenOver).unwrap();
        assert!(matches!(rx.recv().await, Some(Event::TakenOver)));
    }

    #[test]
    fn an_idle_inbox_is_small() {
        // The shared state is all an idle connection pays (no queue allocated).
        assert!(
            std::mem::size_of::<Shared>() <= 160,
            "{}",
            std::mem::size_of::<Shared>()
        );
    }
}
