//! MQTT QoS 2 receiver state (no I/O): which packet identifiers of a client are between
//! PUBLISH and PUBREL, so a QoS 2 message is buffered exactly once per packet identifier.
//!
//! MQTT (3.1.1 §4.3.3, 5.0 §4.3.3): until the receiver gets the PUBREL, any PUBLISH with
//! the same packet identifier (a retransmission, DUP=1 or not) is the same message and must
//! not be delivered onward again. Two places remember a packet identifier:
//!
//! - [`Qos2Sessions`], shared by all connections and keyed by client id: a client that
//!   reconnects with a persistent session and retransmits is recognised; the message goes
//!   to rumqttd again (its per-connection state is new and must send the PUBREC) but not
//!   into the buffer. A clean session forgets the client's entries.
//! - [`Inbox`], one per connection: a retransmission on the *same* connection is dropped
//!   before rumqttd sees it, because rumqttd already holds that message and sends its
//!   PUBREC; passing a second copy would make rumqttd deliver it twice to local
//!   subscribers (its QoS 2 log pairs each PUBREL with the oldest stored PUBLISH, not by
//!   packet identifier).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;

/// Packet identifiers received and not yet released, per client id (all connections).
#[derive(Debug, Default)]
pub struct Qos2Sessions {
    pending: Mutex<HashMap<Bytes, HashSet<u16>>>,
}

impl Qos2Sessions {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<Bytes, HashSet<u16>>) -> R) -> R {
        f(&mut self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Forgets a client's packet identifiers (clean session, or its session ended).
    pub fn clear(&self, client: &Bytes) {
        self.with(|m| m.remove(client));
    }

    /// Records `pkid`; false if it was already pending (a retransmission).
    fn insert(&self, client: &Bytes, pkid: u16) -> bool {
        self.with(|m| m.entry(client.clone()).or_default().insert(pkid))
    }

    fn release(&self, client: &Bytes, pkid: u16) {
        self.with(|m| {
            if let Some(set) = m.get_mut(client) {
                set.remove(&pkid);
                if set.is_empty() {
                    m.remove(client);
                }
            }
        });
    }
}

/// What to do with a QoS 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time: buffer it and pass it on.
    New,
    /// Seen on an earlier connection of this client: pass it on (rumqttd must PUBREC it),
    /// do not buffer it again.
    Forward,
    /// Already passed on over this connection: drop it.
    Drop,
}

/// One connection's view.
#[derive(Debug, Default)]
pub struct Inbox {
    here: HashSet<u16>,
}

impl Inbox {
    /// Classifies a QoS 2 PUBLISH with `pkid` from `client`.
    pub fn publish(&mut self, sessions: &Qos2Sessions, client: &Bytes, pkid: u16) -> Verdict {
        if !self.here.insert(pkid) {
            return Verdict::Drop;
        }
        if sessions.insert(client, pkid) {
            Verdict::New
        } else {
            Verdict::Forward
        }
    }

    /// PUBREL: the packet identifier may be reused for a new message.
    pub fn release(&mut self, sessions: &Qos2Sessions, client: &Bytes, pkid: u16) {
        self.here.remove(&pkid);
        sessions.release(client, pkid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_once_per_packet_id() {
        let s = Qos2Sessions::default();
        let c = Bytes::from_static(b"cam");
        let mut a = Inbox::default();
        assert_eq!(a.publish(&s, &c, 1), Verdict::New);
        assert_eq!(
            a.publish(&s, &c, 1),
            Verdict::Drop,
            "DUP on the same connection"
        );
        assert_eq!(a.publish(&s, &c, 2), Verdict::New);
        // Reconnect (persistent session): the retransmission reaches rumqttd, not the buffer.
        let mut b = Inbox::default();
        assert_eq!(b.publish(&s, &c, 1), Verdict::Forward);
        assert_eq!(b.publish(&s, &c, 1), Verdict::Drop);
        b.release(&s, &c, 1);
        // Released: the identifier now names a new message.
        assert_eq!(b.publish(&s, &c, 1), Verdict::New);
        // Another client's identifiers are independent.
        let other = Bytes::from_static(b"other");
        assert_eq!(Inbox::default().publish(&s, &other, 2), Verdict::New);
        // A clean session forgets.
        s.clear(&c);
        assert_eq!(Inbox::default().publish(&s, &c, 2), Verdict::New);
    }
}
