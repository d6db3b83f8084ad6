//! Fetches (and other readers) waiting for something to change: each registers its
//! connection's `Notify` once, and a change wakes every one registered.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Waiters(Mutex<Vec<Weak<Notify>>>);

impl Waiters {
    /// Registers `n` to be notified on the next [`Waiters::wake`] (once, however often
    /// it is registered before that: a connection keeps one `Notify`).
    pub(crate) fn register(&self, n: &Arc<Notify>) {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if w.iter().any(|x| std::ptr::eq(x.as_ptr(), Arc::as_ptr(n))) {
            return;
        }
        if w.len() >= 64 {
            w.retain(|x| x.strong_count() > 0);
        }
        w.push(Arc::downgrade(n));
    }

    /// Wakes everyone registered. Drained in place: the list keeps its capacity for the
    /// next registrations.
    pub(crate) fn wake(&self) {
        let mut waiters = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for w in waiters.drain(..) {
            if let Some(n) = w.upgrade() {
                n.notify_one();
            }
        }
    }
}
