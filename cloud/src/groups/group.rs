//! One consumer group's membership state machine (Kafka's classic rebalance protocol).
//! No I/O: requests and the clock come in as method calls; answers go out through the
//! oneshot senders parked in the members (join and sync replies are deferred until the
//! rebalance phase completes).
//!
//! States: Empty -> PreparingRebalance -> CompletingRebalance -> Stable, and back to
//! PreparingRebalance on any join, leave or session expiry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

pub(crate) const NONE: i16 = 0;
pub(crate) const ILLEGAL_GENERATION: i16 = 22;
pub(crate) const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
pub(crate) const INVALID_SESSION_TIMEOUT: i16 = 26;
pub(crate) const REBALANCE_IN_PROGRESS: i16 = 27;
pub(crate) const MEMBER_ID_REQUIRED: i16 = 79;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// The deferred answer to a JoinGroup.
#[derive(Debug, Clone, Default)]
pub(crate) struct JoinResult {
    pub(crate) error: i16,
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    /// Filled for the leader only: (member id, instance id, metadata).
    pub(crate) members: Vec<(String, Option<String>, Bytes)>,
}

/// The deferred answer to a SyncGroup.
#[derive(Debug, Clone, Default)]
pub(crate) struct SyncResult {
    pub(crate) error: i16,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) assignment: Bytes,
}

pub(crate) struct JoinRequest {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) protocol_type: String,
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member must first learn its id, then join with it.
    pub(crate) require_known_member_id: bool,
}

pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) protocols: Vec<(String, Bytes)>,
    pub(crate) assignment: Bytes,
    last_seen: Instant,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) state: State,
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: Option<String>,
    pub(crate) members: BTreeMap<String, Member>,
    pending: BTreeMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    initial_delay: Duration,
    /// The rebalance in progress started from an empty group: it waits the initial delay
    /// even when everyone known has joined (Kafka's `InitialDelayedJoin`).
    delayed_join: bool,
    next_member: u64,
}

impl Group {
    pub(crate) fn new(name: &str, initial_delay: Duration) -> Group {
        Group {
            name: name.to_string(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            rebalance_deadline: None,
            initial_delay,
            delayed_join: false,
            next_member: 0,
        }
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{client_id}-{:x}-{}", nanos, self.next_member)
    }

    /// Handles a JoinGroup; the answer arrives on `reply` now or when the join phase ends.
    pub(crate) fn join(
        &mut self,
        req: JoinRequest,
        now: Instant,
        reply: oneshot::Sender<JoinResult>,
    ) {
        let fail = |reply: oneshot::Sender<JoinResult>, error: i16, member_id: String| {
            let _ = reply.send(JoinResult {
                error,
                generation: -1,
                member_id,
                ..Default::default()
            });
        };
        if let Some(pt) = &self.protocol_type {
            if !self.members.is_empty() && *pt != req.protocol_type {
                return fail(reply, INCONSISTENT_GROUP_PROTOCOL, req.member_id);
            }
        }
        if !self.members.is_empty() {
            let ok = req.protocols.iter().any(|(name, _)| {
                self.members
                    .values()
                    .filter(|m| m.id != req.member_id)
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            });
            if !ok {
                return fail(reply, INCONSISTENT_GROUP_PROTOCOL, req.member_id);
            }
        }
        let member_id = if req.member_id.is_empty() {
            let id = self.new_member_id(&req.client_id);
            if req.require_known_member_id {
                self.pending.insert(id.clone(), now + req.session_timeout);
                return fail(reply, MEMBER_ID_REQUIRED, id);
            }
            id
        } else if self.members.contains_key(&req.member_id)
            || self.pending.remove(&req.member_id).is_some()
        {
            req.member_id.clone()
        } else {
            return fail(reply, UNKNOWN_MEMBER_ID, req.member_id);
        };
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        let m = self
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                id: member_id.clone(),
                instance_id: req.instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                last_seen: now,
                join_waiter: None,
                sync_waiter: None,
            });
        let changed = m.protocols != req.protocols;
        m.protocols = req.protocols;
        m.session_timeout = req.session_timeout;
        m.rebalance_timeout = req.rebalance_timeout;
        m.last_seen = now;
        m.join_waiter = Some(reply);
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        match self.state {
            State::Stable if !changed && !is_leader => {
                // A follower rejoining with the same metadata: answer with the current
                // generation, no rebalance needed.
                if let Some(w) = self
                    .members
                    .get_mut(&member_id)
                    .and_then(|m| m.join_waiter.take())
                {
                    let _ = w.send(self.join_result(&member_id, false));
                }
            }
            State::PreparingRebalance => self.maybe_complete_join(now),
            _ => self.start_rebalance(now),
        }
    }

    /// Starts a rebalance of a stable group (members learn it from their next heartbeat).
    pub(crate) fn rebalance(&mut self, now: Instant) {
        if self.state == State::Stable {
            self.start_rebalance(now);
        }
    }

    fn start_rebalance(&mut self, now: Instant) {
        let was_empty = self.state == State::Empty;
        if self.state == State::CompletingRebalance {
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncResult {
                        error: REBALANCE_IN_PROGRESS,
                        ..Default::default()
                    });
                }
            }
        }
        self.state = State::PreparingRebalance;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        let wait = if was_empty {
            self.initial_delay.min(timeout)
        } else {
            timeout
        };
        self.rebalance_deadline = Some(now + wait);
        self.delayed_join = was_empty && !self.initial_delay.is_zero();
        self.maybe_complete_join(now);
    }

    fn maybe_complete_join(&mut self, now: Instant) {
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        let deadline_passed = self.rebalance_deadline.is_none_or(|d| now >= d);
        // A rebalance of an empty group (a new one, or one whose members all left) waits
        // the initial delay so that members starting together land in one generation;
        // others complete once everyone rejoined.
        if deadline_passed || (all_joined && !self.delayed_join) {
            self.complete_join();
        }
    }

    fn complete_join(&mut self) {
        self.members.retain(|_, m| m.join_waiter.is_some());
        self.rebalance_deadline = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.generation += 1;
            self.leader = None;
            self.protocol = None;
            return;
        }
        self.generation += 1;
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        self.protocol = self.members.get(&leader).and_then(|l| {
            l.protocols
                .iter()
                .find(|(n, _)| {
                    self.members
                        .values()
                        .all(|m| m.protocols.iter().any(|(x, _)| x == n))
                })
                .map(|(n, _)| n.clone())
        });
        self.state = State::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let res = self.join_result(&id, id == leader);
            if let Some(w) = self.members.get_mut(&id).and_then(|m| m.join_waiter.take()) {
                let _ = w.send(res);
            }
        }
    }

    fn join_result(&self, member_id: &str, with_members: bool) -> JoinResult {
        let protocol = self.protocol.clone();
        let members = if with_members {
            self.members
                .values()
                .map(|m| {
                    let meta = m
                        .protocols
                        .iter()
                        .find(|(n, _)| Some(n) == protocol.as_ref())
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default();
                    (m.id.clone(), m.instance_id.clone(), meta)
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol,
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members,
        }
    }

    fn check_member(&self, member_id: &str, generation: i32) -> Result<(), i16> {
        if !self.members.contains_key(member_id) {
            return Err(UNKNOWN_MEMBER_ID);
        }
        if generation != self.generation {
            return Err(ILLEGAL_GENERATION);
        }
        Ok(())
    }

    pub(crate) fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
        reply: oneshot::Sender<SyncResult>,
    ) {
        let err = |e: i16| SyncResult {
            error: e,
            ..Default::default()
        };
        if let Err(e) = self.check_member(member_id, generation) {
            let _ = reply.send(err(e));
            return;
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_seen = now;
        }
        match self.state {
            State::PreparingRebalance | State::Empty => {
                let _ = reply.send(err(REBALANCE_IN_PROGRESS));
            }
            State::Stable => {
                let a = self
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                let _ = reply.send(self.sync_result(a));
            }
            State::CompletingRebalance => {
                if let Some(m) = self.members.get_mut(member_id) {
                    m.sync_waiter = Some(reply);
                }
                if self.leader.as_deref() == Some(member_id) {
                    let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    self.state = State::Stable;
                    let (pt, p) = (self.protocol_type.clone(), self.protocol.clone());
                    for m in self.members.values_mut() {
                        if let Some(w) = m.sync_waiter.take() {
                            let _ = w.send(SyncResult {
                                error: NONE,
                                protocol_type: pt.clone(),
                                protocol: p.clone(),
                                assignment: m.assignment.clone(),
                            });
                        }
                    }
                }
            }
        }
    }

    fn sync_result(&self, assignment: Bytes) -> SyncResult {
        SyncResult {
            error: NONE,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment,
        }
    }

    pub(crate) fn heartbeat(&mut self, member_id: &str, generation: i32, now: Instant) -> i16 {
        if let Err(e) = self.check_member(member_id, generation) {
            return e;
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_seen = now;
        }
        if self.state == State::PreparingRebalance {
            REBALANCE_IN_PROGRESS
        } else {
            NONE
        }
    }

    /// Removes a member (LeaveGroup). Returns the error code for that member.
    pub(crate) fn leave(&mut self, member_id: &str, now: Instant) -> i16 {
        let Some(mut m) = self.members.remove(member_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        if let Some(w) = m.join_waiter.take() {
            let _ = w.send(JoinResult {
                error: UNKNOWN_MEMBER_ID,
                generation: -1,
                ..Default::default()
            });
        }
        self.after_removal(now);
        NONE
    }

    fn after_removal(&mut self, now: Instant) {
        if self.members.is_empty() {
            self.state = State::Empty;
            self.leader = None;
            self.protocol = None;
            self.rebalance_deadline = None;
            self.generation += 1;
        } else if self.state == State::PreparingRebalance {
            self.maybe_complete_join(now);
        } else {
            self.start_rebalance(now);
        }
    }

    /// Validates an offset commit from `member_id` at `generation`.
    pub(crate) fn check_commit(&self, member_id: &str, generation: i32) -> i16 {
        if generation < 0 && member_id.is_empty() {
            // A simple (unmanaged) consumer: allowed while the group has no members.
            return if self.members.is_empty() {
                NONE
            } else {
                UNKNOWN_MEMBER_ID
            };
        }
        if let Err(e) = self.check_member(member_id, generation) {
            return e;
        }
        if self.state == State::CompletingRebalance {
            return REBALANCE_IN_PROGRESS;
        }
        NONE
    }

    /// Advances time: ends a join phase whose deadline passed, expires silent members.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.pending.retain(|_, deadline| *deadline > now);
        if self.state == State::PreparingRebalance {
            self.maybe_complete_join(now);
        }
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.join_waiter.is_none() && now.duration_since(m.last_seen) > m.session_timeout
            })
            .map(|m| m.id.clone())
            .collect();
        if !expired.is_empty() {
            for id in &expired {
                if let Some(mut m) = self.members.remove(id) {
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(SyncResult {
                            error: UNKNOWN_MEMBER_ID,
                            ..Default::default()
                        });
                    }
                }
            }
            self.after_removal(now);
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests;
