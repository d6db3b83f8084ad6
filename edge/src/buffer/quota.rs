//! Quota victims: which committed batch to evict, by priority class and age.

use super::{BatchInfo, Error, State};

/// The oldest (or newest) evictable batch of the lowest class at or below
/// `max_priority`: not read by the replicator, not being appended to.
pub(super) fn victim(s: &mut State, max_priority: u8, oldest: bool) -> Result<Option<u64>, Error> {
    let claimed = s.claimed;
    let State {
        catalog, appending, ..
    } = s;
    catalog.victim(max_priority, oldest, claimed, |k| {
        claimed.is_none_or(|c| k > c) && !appending.contains(&k)
    })
}

/// Takes batch `key` out of the state (its file goes to the reaper).
pub(super) fn remove_batch(s: &mut State, key: u64) -> BatchInfo {
    s.catalog.remove(key).unwrap_or(BatchInfo {
        live: 0,
        bytes: 0,
        priority: 0,
        first_recv_ms: 0,
    })
}
