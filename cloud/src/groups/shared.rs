//! Shared groups (design brief section 3, "Shared subscription"): a Kafka consumer group
//! whose id starts with `$shared/` gives every member every partition of the topics it
//! subscribes to, and each record batch to one member. No I/O here: the fetch handler
//! passes a reader, the coordinator reports the group's rebalances.
//!
//! How a member is served, in order:
//!
//! 1. SyncGroup hands every member all partitions of its subscribed topics, whatever the
//!    leader assigned (`consumer_protocol.rs`). Eager assignors only (`range`, `roundrobin`: the
//!    default of librdkafka, kafka-python and aiokafka); `cooperative-sticky` is dropped
//!    from a member's offer when it offers another.
//! 2. A Fetch carries no group id, so a fetch is a member's when its client id and host
//!    match a member of a shared group subscribed to the topic ([`Shares::classify`]).
//!    A consumer outside the group that reads the same topic from the same host with the
//!    same client id would be served as a member: give it another `client.id`.
//! 3. Each partition has one position for the group (`next`, the lowest offset never
//!    handed out). A member's fetch at offset X takes whole stored batches: first ones
//!    handed back (below), at or above X, then new ones from `next`. Every batch handed
//!    out is a *span* pending on the connection that fetched it. A member's offsets only
//!    grow (clients drop records below their fetch position), and a fetch that started
//!    in an earlier rebalance epoch, or while the group rebalances, gets nothing (the
//!    client discards it). While another member's fetch is open on the partition, the
//!    one served last waits its turn (round robin between fetching members).
//! 4. OffsetCommit is the acknowledgement. A commit of X names the span that holds X-1
//!    (spans are disjoint, so exactly one connection's); that connection's client
//!    consumed in order up to X-1, so every span of that connection ending below X is
//!    done. The offset stored for the group is the lowest offset not yet done
//!    ([`Part::lowest`]), which OffsetFetch also answers.
//! 5. When the group becomes stable again after a rebalance (a member joined, left or
//!    died), every span still pending is handed back: the members start again from the
//!    stored offset (eager rebalance) and receive them, skipping what is done. Delivery is
//!    at least once: a member that consumed a batch but had not committed it when the
//!    group rebalanced, or when the cloud restarted, sees it again (or another member does).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::log::batch::BatchHeader;

pub(crate) use super::consumer_protocol::{assignment, subscribed_topics};

/// The group id prefix that makes a group shared.
pub(crate) const PREFIX: &str = "$shared/";

/// Bytes handed to one member per partition per fetch (at least one batch): small enough
/// that a backlog is spread over the members, large enough for few round trips.
pub(crate) const FETCH_BYTES: usize = 256 << 10;

/// Spans one connection may hold unacknowledged per partition before it gets no more.
const MAX_PENDING: usize = 1 << 16;

/// The rebalance protocol that never revokes (so never restarts a member from the
/// group's stored offset): not offered to shared groups unless it is all a member offers.
pub(crate) const COOPERATIVE: &str = "cooperative-sticky";

pub(crate) fn is_shared(group: &str) -> bool {
    group.starts_with(PREFIX)
}

/// A client connection (the unit a span is pending on).
pub(crate) type Conn = u64;

/// A member as the fetch path recognises it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Tag {
    pub(crate) client_id: String,
    /// The peer's address as the connection saw it (no leading `/`).
    pub(crate) host: String,
}

/// A batch handed to a connection, not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct Span {
    end: u64,
    conn: Conn,
}

/// One partition's state for one shared group.
#[derive(Debug, Default)]
struct Part {
    /// The lowest offset never handed out.
    next: u64,
    /// Ranges handed back, to hand out again: first offset -> last offset.
    returned: BTreeMap<u64, u64>,
    /// Spans handed out: first offset -> span.
    pending: BTreeMap<u64, Span>,
    /// How many of `pending` each connection holds (bounded by [`MAX_PENDING`]).
    held: HashMap<Conn, usize>,
    /// Connections parked in a long poll on this partition, with what wakes them.
    parked: HashMap<Conn, Arc<Notify>>,
    /// The connection served last.
    last_served: Option<Conn>,
}

impl Part {
    fn lowest(&self) -> u64 {
        let r = self.returned.keys().next().copied().unwrap_or(u64::MAX);
        let p = self.pending.keys().next().copied().unwrap_or(u64::MAX);
        self.next.min(r).min(p)
    }

    fn hand_back(&mut self, lo: u64, hi: u64) {
        if lo <= hi {
            self.returned.insert(lo, hi);
        }
    }

    /// Hands the span `lo..=span.end` out to `span.conn`.
    fn hold(&mut self, lo: u64, span: Span) {
        *self.held.entry(span.conn).or_default() += 1;
        self.pending.insert(lo, span);
    }

    /// Hands every pending span back (step 5).
    fn hand_back_all(&mut self) {
        for (lo, span) in std::mem::take(&mut self.pending) {
            self.hand_back(lo, span.end);
        }
        self.held.clear();
        self.last_served = None;
    }

    /// Acknowledges what a commit of `offset` covers (see the module docs, step 4).
    fn commit(&mut self, offset: u64) {
        let Some(last) = offset.checked_sub(1) else {
            return;
        };
        let conn = match self.pending.range(..=last).next_back() {
            Some((_, s)) if s.end >= last => s.conn,
            _ => return,
        };
        let mut done = 0;
        self.pending.retain(|_, s| {
            let keep = s.conn != conn || s.end >= offset;
            done += usize::from(!keep);
            keep
        });
        if let Some(n) = self.held.get_mut(&conn) {
            *n -= done.min(*n);
            if *n == 0 {
                self.held.remove(&conn);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Share {
    generation: i32,
    stable: bool,
    /// Bumped whenever the group starts or ends a rebalance.
    epoch: u64,
    /// Members' tags and the topics each subscribed to.
    members: Vec<(Tag, Vec<String>)>,
    /// This rebalance assigns nothing (step 5): once stable, another one must follow.
    revoking: bool,
    parts: HashMap<(String, i32), Part>,
}

#[derive(Debug, Default)]
struct Inner {
    groups: HashMap<String, Share>,
    /// Which shared groups have a member with a tag.
    tags: HashMap<Tag, BTreeSet<String>>,
}

/// Every shared group's dispatch state.
#[derive(Debug, Default)]
pub(crate) struct Shares {
    inner: Mutex<Inner>,
}

/// One partition of a member's fetch: who asks, where, and from which offset.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub(crate) who: &'a Member,
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) conn: Conn,
    pub(crate) offset: u64,
}

/// Which group (and rebalance epoch) a fetch is served for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) group: String,
    pub(crate) epoch: u64,
}

impl Shares {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The coordinator reports a shared group's state after every change it may have
    /// made; `members` is called only when the generation or stability changed. Returns
    /// whether the coordinator must start another rebalance now (step 5).
    pub(crate) fn observe(
        &self,
        group: &str,
        generation: i32,
        stable: bool,
        members: impl FnOnce() -> Vec<(Tag, Vec<String>)>,
    ) -> bool {
        let mut inner = self.lock();
        let s = inner.groups.entry(group.to_string()).or_default();
        if s.generation == generation && s.stable == stable {
            return false;
        }
        let again = stable && std::mem::take(&mut s.revoking);
        s.generation = generation;
        s.epoch += 1;
        if stable {
            // Step 5: what members were sent and have not acknowledged goes out again.
            for part in s.parts.values_mut() {
                part.hand_back_all();
            }
        }
        s.stable = stable;
        let old = std::mem::replace(&mut s.members, members());
        let new: Vec<Tag> = s.members.iter().map(|(t, _)| t.clone()).collect();
        for (t, _) in old {
            if let Some(gs) = inner.tags.get_mut(&t) {
                gs.remove(group);
                if gs.is_empty() {
                    inner.tags.remove(&t);
                }
            }
        }
        for t in new {
            inner.tags.entry(t).or_default().insert(group.to_string());
        }
        again
    }

    /// SyncGroup of a rebalance: whether it must assign nothing (step 5). While members
    /// hold unacknowledged batches, this rebalance revokes every partition and the next
    /// one (started as soon as the group is stable) gives them back: a client keeps its
    /// position for a partition it keeps across a rebalance (kafka-python does), so only
    /// a revoked and reassigned partition makes it restart from the group's offset and
    /// take what was handed back.
    pub(crate) fn revoke_first(&self, group: &str) -> bool {
        let mut inner = self.lock();
        let Some(s) = inner.groups.get_mut(group) else {
            return false;
        };
        s.revoking = s.parts.values().any(|p| !p.pending.is_empty());
        s.revoking
    }

    /// The shared group a fetch of `topic` by `tag` is for, if any.
    pub(crate) fn classify(&self, tag: &Tag, topic: &str) -> Option<Member> {
        let inner = self.lock();
        let groups = inner.tags.get(tag)?;
        groups.iter().find_map(|g| {
            let s = inner.groups.get(g)?;
            s.members
                .iter()
                .any(|(t, topics)| t == tag && topics.iter().any(|x| x == topic))
                .then(|| Member {
                    group: g.clone(),
                    epoch: s.epoch,
                })
        })
    }

    /// Whether the partition has state (else the coordinator starts it, [`Shares::start`]).
    pub(crate) fn started(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.lock()
            .groups
            .get(group)
            .is_some_and(|s| s.parts.contains_key(&(topic.to_string(), partition)))
    }

    /// Starts a partition's state at `next` (the group's stored offset, or the first
    /// fetch's offset).
    pub(crate) fn start(&self, group: &str, topic: &str, partition: i32, next: u64) {
        let mut inner = self.lock();
        let s = inner.groups.entry(group.to_string()).or_default();
        s.parts
            .entry((topic.to_string(), partition))
            .or_insert_with(|| Part {
                next,
                ..Default::default()
            });
    }

    /// Parks `conn` on the partition for the length of a fetch, until [`Shares::unpark`]:
    /// the connection served last yields to it, and a batch handed to another connection
    /// wakes it through `wake` (step 3).
    pub(crate) fn park(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        conn: Conn,
        wake: &Arc<Notify>,
    ) {
        let mut inner = self.lock();
        if let Some(p) = part_mut(&mut inner, group, topic, partition) {
            p.parked.insert(conn, wake.clone());
        }
    }

    pub(crate) fn unpark(&self, group: &str, topic: &str, partition: i32, conn: Conn) {
        let mut inner = self.lock();
        if let Some(p) = part_mut(&mut inner, group, topic, partition) {
            p.parked.remove(&conn);
        }
    }

    /// Hands the asking connection the batches it gets (step 3), at least one if any,
    /// reading the log with `read(from, max_bytes)` (whole batches from the one holding
    /// `from`, in order).
    pub(crate) fn dispatch<E>(
        &self,
        ask: &Ask<'_>,
        max_bytes: usize,
        mut read: impl FnMut(u64, usize) -> Result<Vec<Bytes>, E>,
    ) -> Result<Vec<Bytes>, E> {
        let Ask {
            who,
            topic,
            partition,
            conn,
            offset,
        } = *ask;
        let mut inner = self.lock();
        let Some(s) = inner.groups.get_mut(&who.group) else {
            return Ok(Vec::new());
        };
        if !s.stable || s.epoch != who.epoch {
            return Ok(Vec::new());
        }
        let Some(part) = s.parts.get_mut(&(topic.to_string(), partition)) else {
            return Ok(Vec::new());
        };
        // Turn taking: served last and another member's fetch is open: that one takes
        // this batch and wakes this fetch, which takes the next. (A member that cannot
        // take, past MAX_PENDING or in a stale epoch, holds the others back for at most
        // its fetch's max wait.)
        let others_wait = part.parked.keys().any(|c| *c != conn);
        if others_wait && part.last_served == Some(conn) {
            return Ok(Vec::new());
        }
        if part.held.get(&conn).is_some_and(|n| *n >= MAX_PENDING) {
            return Ok(Vec::new());
        }
        if offset > part.next {
            // A member ahead of the group (it sought there): what it skipped goes to the
            // others.
            let (lo, hi) = (part.next, offset - 1);
            part.hand_back(lo, hi);
            part.next = offset;
        }
        let mut out = Vec::new();
        let mut budget = max_bytes.max(1);
        // Ranges handed back, at or above the member's position, lowest first.
        let ranges: Vec<(u64, u64)> = part
            .returned
            .range(offset..)
            .map(|(lo, hi)| (*lo, *hi))
            .collect();
        for (lo, hi) in ranges {
            if budget == 0 {
                break;
            }
            part.returned.remove(&lo);
            let mut from = lo;
            for b in read(lo, budget)? {
                let Some((base, end)) = span_of(&b) else {
                    continue;
                };
                if end < from {
                    continue;
                }
                if base > hi || b.len() > budget && !out.is_empty() {
                    break;
                }
                budget = budget.saturating_sub(b.len());
                part.hold(from, Span { end, conn });
                from = end + 1;
                out.push(b);
            }
            // What the read did not reach stays handed back.
            part.hand_back(from, hi);
        }
        while budget > 0 {
            let from = part.next;
            let batches = read(from, budget)?;
            if batches.is_empty() {
                break;
            }
            let mut took = false;
            for b in batches {
                let Some((base, end)) = span_of(&b) else {
                    continue;
                };
                if end < part.next {
                    continue;
                }
                if b.len() > budget && !out.is_empty() {
                    budget = 0;
                    break;
                }
                budget = budget.saturating_sub(b.len());
                let lo = base.max(part.next);
                part.hold(lo, Span { end, conn });
                part.next = end + 1;
                out.push(b);
                took = true;
            }
            if !took {
                break;
            }
        }
        if !out.is_empty() {
            part.last_served = Some(conn);
            for (c, wake) in &part.parked {
                if *c != conn {
                    wake.notify_one();
                }
            }
        }
        Ok(out)
    }

    /// A member committed `offset` (step 4). Returns the offset to store for the group:
    /// the lowest not yet done, or `None` if the partition has no state here (the stored
    /// offset stands: after a restart every span is pending again from it).
    pub(crate) fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        offset: u64,
    ) -> Option<u64> {
        let mut inner = self.lock();
        let part = inner
            .groups
            .get_mut(group)?
            .parts
            .get_mut(&(topic.to_string(), partition))?;
        part.commit(offset);
        Some(part.lowest())
    }

    /// How many connections are parked on the partition (tests).
    #[cfg(test)]
    pub(crate) fn parked(&self, group: &str, topic: &str, partition: i32) -> usize {
        let mut inner = self.lock();
        part_mut(&mut inner, group, topic, partition).map_or(0, |p| p.parked.len())
    }

    /// A commit from outside the group (generation -1: an admin tool resetting the
    /// group's offsets): the partition starts again at `offset`, nothing pending.
    pub(crate) fn reset(&self, group: &str, topic: &str, partition: i32, offset: u64) {
        let mut inner = self.lock();
        let s = inner.groups.entry(group.to_string()).or_default();
        s.parts.insert(
            (topic.to_string(), partition),
            Part {
                next: offset,
                ..Default::default()
            },
        );
    }

    /// Every partition with state: ((topic, partition), lowest offset not done).
    pub(crate) fn all_lowest(&self, group: &str) -> Vec<((String, i32), u64)> {
        let inner = self.lock();
        inner
            .groups
            .get(group)
            .map(|s| {
                s.parts
                    .iter()
                    .map(|(k, p)| (k.clone(), p.lowest()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets a deleted group.
    pub(crate) fn forget(&self, group: &str) {
        let mut inner = self.lock();
        if let Some(s) = inner.groups.remove(group) {
            for (t, _) in s.members {
                if let Some(gs) = inner.tags.get_mut(&t) {
                    gs.remove(group);
                    if gs.is_empty() {
                        inner.tags.remove(&t);
                    }
                }
            }
        }
    }
}

fn part_mut<'a>(
    inner: &'a mut Inner,
    group: &str,
    topic: &str,
    partition: i32,
) -> Option<&'a mut Part> {
    inner
        .groups
        .get_mut(group)?
        .parts
        .get_mut(&(topic.to_string(), partition))
}

/// A stored batch's first and last offsets.
fn span_of(b: &[u8]) -> Option<(u64, u64)> {
    let h = BatchHeader::parse(b).ok()?;
    let base = u64::try_from(h.base_offset).ok()?;
    Some((base, base + h.offset_count() - 1))
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
