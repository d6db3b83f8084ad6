//! Stored positions of share groups: written in order when a group changes, and
//! deleted once a group without members expires.

use super::*;

impl Hub {
    /// Writes the current positions of the share group `key` (live or parked), or
    /// deletes them if the group is neither. Writes are ordered, and each writes the
    /// state current when its turn comes, so a late write never stores older positions.
    pub(super) async fn save_share(&self, key: &str, durable: bool) {
        let _turn = self.share_writes.lock().await;
        let value = {
            let g = self.lock();
            match (g.shares.get(key), g.parked.get(key)) {
                (Some(group), _) => Some(saved_group(&group.committed()).encode(0)),
                (None, Some(p)) => Some(saved_group(&p.cursors).encode(p.left_ms)),
                (None, None) => None,
            }
        };
        let mut set = WriteSet::default();
        match value {
            Some(v) if self.config.share_group_expiry_secs > 0 => set.put_share_group(key, v),
            _ => set.delete_share_group(key),
        }
        match self.log.store.write(set, durable).await {
            Ok(()) => debug!(group = key, durable, "share group positions stored"),
            Err(e) => warn!(group = key, cause = %e, "cannot store share group positions"),
        }
    }

    /// On a clean stop, for the connections that did not finish within the stop's wait
    /// (their session is still online): their stored records (written while online,
    /// with disconnect time 0, which a restart counts from its own start) get the stop
    /// time. Their positions are those last stored (at-least-once redelivery since).
    pub(crate) async fn stamp_online_sessions(&self) {
        let online: Vec<String> = self
            .lock()
            .sessions
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Online { .. }))
            .map(|(c, _)| c.clone())
            .collect();
        if online.is_empty() {
            return;
        }
        let now = records::now_ms().max(1) as u64;
        let mut set = WriteSet::default();
        for client in online {
            match self.log.store.session(&client) {
                Ok(Some(v)) => {
                    if let Some((saved, 0)) = SavedSession::decode(&v) {
                        set.put_session(&client, saved.encode(now));
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(client, cause = %e, "cannot read a session at shutdown"),
            }
        }
        if let Err(e) = self.log.store.write(set, true).await {
            warn!(cause = %e, "cannot store the sessions' disconnect time at shutdown");
        }
    }

    /// Stores the positions of every share group with members (on a clean shutdown).
    pub(crate) async fn save_share_groups(&self) {
        let keys: Vec<String> = self.lock().shares.keys().cloned().collect();
        for k in keys {
            self.save_share(&k, true).await;
        }
    }

    pub(super) fn expire_share_later(self: Arc<Self>, key: String, left: Duration, epoch: u64) {
        tokio::spawn(async move {
            tokio::time::sleep(left).await;
            let expired = {
                let mut g = self.lock();
                match g.parked.get(&key) {
                    Some(p) if p.epoch == epoch => g.parked.remove(&key).is_some(),
                    _ => false,
                }
            };
            if expired {
                info!(group = key, "share group expired");
                self.save_share(&key, true).await;
            }
        });
    }
}
