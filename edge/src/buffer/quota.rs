//! Quota victims: which committed batch to evict, by priority class and age.

use super::{BatchInfo, State};

pub(super) fn victim(s: &State, max_priority: u8, oldest: bool) -> Option<u64> {
    let claimed = s.claimed;
    s.by_priority.range(..=max_priority).find_map(|(_, keys)| {
        let mut eligible = keys
            .iter()
            .filter(|k| claimed.is_none_or(|c| **k > c) && !s.appending.contains(k));
        if oldest {
            eligible.next().copied()
        } else {
            eligible.next_back().copied()
        }
    })
}

pub(super) fn remove_batch(s: &mut State, key: u64) -> BatchInfo {
    let info = s.batches.remove(&key).unwrap_or(BatchInfo {
        live: 0,
        bytes: 0,
        priority: 0,
        first_recv_ms: 0,
    });
    if let Some(set) = s.by_priority.get_mut(&info.priority) {
        set.remove(&key);
    }
    s.stored_bytes -= info.bytes.min(s.stored_bytes);
    s.live_records -= u64::from(info.live).min(s.live_records);
    info
}
