//! The group coordinator: consumer-group membership (in memory, rebuilt by rejoining
//! after a restart, as Kafka clients do) and committed offsets (durable in the store).

mod consumer_protocol;
pub(crate) mod group;
pub(crate) mod shared;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::storage::{self, Store, WriteSet};
use group::{Group, JoinRequest, JoinResult, State, SyncResult};
use shared::{Shares, Tag};

pub(crate) const GROUP_ID_NOT_FOUND: i16 = 69;
pub(crate) const NON_EMPTY_GROUP: i16 = 68;
pub(crate) const INVALID_GROUP_ID: i16 = 24;

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed {
    pub(crate) offset: i64,
    pub(crate) leader_epoch: i32,
    pub(crate) metadata: String,
}

impl Committed {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + self.metadata.len());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.leader_epoch.to_be_bytes());
        v.extend_from_slice(self.metadata.as_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Committed> {
        Some(Committed {
            offset: i64::from_be_bytes(v.get(0..8)?.try_into().ok()?),
            leader_epoch: i32::from_be_bytes(v.get(8..12)?.try_into().ok()?),
            metadata: String::from_utf8_lossy(v.get(12..)?).into_owned(),
        })
    }
}

/// A group as DescribeGroups shows it.
pub(crate) struct GroupView {
    pub(crate) state: &'static str,
    pub(crate) protocol_type: String,
    pub(crate) protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub(crate) members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

pub(crate) struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    store: Arc<Store>,
    initial_delay: Duration,
    pub(crate) session_bounds: (Duration, Duration),
    /// Shared groups' dispatch state (`shared.rs`).
    pub(crate) shares: Shares,
}

/// Reports a shared group's state to `shares` (no-op for other groups), and starts the
/// rebalance that follows one that revoked everything (`shared.rs`, step 5).
fn observe(shares: &Shares, g: &mut Group, now: Instant) {
    if !shared::is_shared(&g.name) {
        return;
    }
    let stable = matches!(g.state, State::Stable | State::Empty);
    let again = shares.observe(&g.name, g.generation, stable, || {
        g.members
            .values()
            .map(|m| {
                let tag = Tag {
                    client_id: m.client_id.clone(),
                    host: m.client_host.trim_start_matches('/').to_string(),
                };
                (tag, member_topics(g, m))
            })
            .collect()
    });
    if again {
        g.rebalance(now);
        observe(shares, g, now);
    }
}

/// The topics a member subscribed to under the group's chosen protocol.
fn member_topics(g: &Group, m: &group::Member) -> Vec<String> {
    let chosen = g.protocol.as_deref().unwrap_or_default();
    m.protocols
        .iter()
        .find(|(n, _)| n == chosen)
        .map(|(_, meta)| shared::subscribed_topics(meta))
        .unwrap_or_default()
}

impl Coordinator {
    pub(crate) fn new(
        store: Arc<Store>,
        initial_delay: Duration,
        session_bounds: (Duration, Duration),
    ) -> Coordinator {
        Coordinator {
            groups: Mutex::new(HashMap::new()),
            store,
            initial_delay,
            session_bounds,
            shares: Shares::default(),
        }
    }

    fn with<R>(&self, group: &str, f: impl FnOnce(&mut Group) -> R) -> R {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let g = groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group, self.initial_delay));
        let r = f(g);
        observe(&self.shares, g, Instant::now());
        r
    }

    /// A shared group's members and the topics each subscribed to (for SyncGroup).
    pub(crate) fn shared_members(&self, group: &str) -> Vec<(String, Vec<String>)> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .get(group)
            .map(|g| {
                g.members
                    .values()
                    .map(|m| (m.id.clone(), member_topics(g, m)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts a shared group's state for a partition on its first fetch: from the
    /// group's stored offset, else from the fetch's `offset`.
    pub(crate) fn shared_start(&self, group: &str, topic: &str, partition: i32, offset: u64) {
        if self.shares.started(group, topic, partition) {
            return;
        }
        let stored = self.store.group_offsets(group).ok().and_then(|v| {
            v.into_iter()
                .find(|(t, p, _)| t == topic && *p as i32 == partition)
                .and_then(|(_, _, v)| Committed::decode(&v))
                .and_then(|c| u64::try_from(c.offset).ok())
        });
        self.shares
            .start(group, topic, partition, stored.unwrap_or(offset));
    }

    /// Runs the clock: call every ~100 ms.
    pub(crate) fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        for g in groups.values_mut() {
            g.tick(now);
            observe(&self.shares, g, now);
        }
    }

    pub(crate) async fn join(&self, group: &str, req: JoinRequest) -> JoinResult {
        let (lo, hi) = self.session_bounds;
        if req.session_timeout < lo || req.session_timeout > hi {
            return JoinResult {
                error: group::INVALID_SESSION_TIMEOUT,
                generation: -1,
                member_id: req.member_id,
                ..Default::default()
            };
        }
        let (tx, rx) = oneshot::channel();
        self.with(group, |g| g.join(req, Instant::now(), tx));
        rx.await.unwrap_or(JoinResult {
            error: group::REBALANCE_IN_PROGRESS,
            generation: -1,
            ..Default::default()
        })
    }

    pub(crate) async fn sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResult {
        let (tx, rx) = oneshot::channel();
        self.with(group, |g| {
            g.sync(member, generation, assignments, Instant::now(), tx)
        });
        rx.await.unwrap_or(SyncResult {
            error: group::REBALANCE_IN_PROGRESS,
            ..Default::default()
        })
    }

    pub(crate) fn heartbeat(&self, group: &str, member: &str, generation: i32) -> i16 {
        self.with(group, |g| g.heartbeat(member, generation, Instant::now()))
    }

    pub(crate) fn leave(&self, group: &str, member: &str) -> i16 {
        self.with(group, |g| g.leave(member, Instant::now()))
    }

    /// Validates and durably stores offsets. Returns the error code for every partition.
    pub(crate) async fn commit(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        offsets: Vec<(String, i32, Committed)>,
    ) -> Result<i16, storage::Error> {
        let code = self.with(group, |g| g.check_commit(member, generation));
        if code != group::NONE {
            return Ok(code);
        }
        let mut set = WriteSet::default();
        for (topic, p, c) in &offsets {
            let c = match (shared::is_shared(group), u64::try_from(c.offset)) {
                // Not a member's commit: a reset of the shared group's offset.
                (true, Ok(o)) if generation < 0 => {
                    self.shares.reset(group, topic, *p, o);
                    c.clone()
                }
                // A member's acknowledgement: the group's offset is the lowest not done.
                (true, Ok(o)) => match self.shares.commit(group, topic, *p, o) {
                    Some(low) => Committed {
                        offset: i64::try_from(low).unwrap_or(i64::MAX),
                        ..c.clone()
                    },
                    // No state here (the stored offset stands, see `Shares::commit`).
                    None => continue,
                },
                (true, Err(_)) => continue,
                (false, _) => c.clone(),
            };
            set.put_offset(group, topic, *p as u32, c.encode());
        }
        self.store.write(set, true).await?;
        Ok(group::NONE)
    }

    /// Committed offsets of a group, keyed by (topic, partition).
    pub(crate) fn offsets(
        &self,
        group: &str,
    ) -> Result<HashMap<(String, i32), Committed>, storage::Error> {
        let mut out = HashMap::new();
        for (t, p, v) in self.store.group_offsets(group)? {
            if let Some(c) = Committed::decode(&v) {
                out.insert((t, p as i32), c);
            }
        }
        for (key, low) in self.shares.all_lowest(group) {
            let c = out.entry(key).or_insert(Committed {
                offset: 0,
                leader_epoch: -1,
                metadata: String::new(),
            });
            c.offset = i64::try_from(low).unwrap_or(i64::MAX);
        }
        Ok(out)
    }

    pub(crate) fn describe(&self, group: &str) -> Option<GroupView> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let g = groups.get(group)?;
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(GroupView {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: g
                .members
                .values()
                .map(|m| {
                    let meta = m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default();
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        meta,
                        m.assignment.clone(),
                    )
                })
                .collect(),
        })
    }

    /// Every known group: (name, protocol type, state). Groups known only by their
    /// committed offsets are listed as Empty.
    pub(crate) fn list(&self) -> Result<Vec<(String, String, &'static str)>, storage::Error> {
        let mut out: HashMap<String, (String, &'static str)> = HashMap::new();
        for g in self.store.groups_with_offsets()? {
            out.insert(g, ("consumer".to_string(), State::Empty.name()));
        }
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        for g in groups.values() {
            if g.is_idle() && g.generation == 0 {
                continue;
            }
            out.insert(
                g.name.clone(),
                (g.protocol_type.clone().unwrap_or_default(), g.state.name()),
            );
        }
        let mut v: Vec<_> = out.into_iter().map(|(n, (t, s))| (n, t, s)).collect();
        v.sort();
        Ok(v)
    }

    /// Deletes an empty group and its committed offsets.
    pub(crate) async fn delete(&self, group: &str) -> Result<i16, storage::Error> {
        let known_offsets = !self.store.group_offsets(group)?.is_empty();
        {
            let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            match groups.get(group) {
                Some(g) if !g.members.is_empty() => return Ok(NON_EMPTY_GROUP),
                Some(_) => {
                    groups.remove(group);
                }
                None if !known_offsets => return Ok(GROUP_ID_NOT_FOUND),
                None => {}
            }
        }
        self.shares.forget(group);
        let mut set = WriteSet::default();
        set.delete_group_offsets(group);
        self.store.write(set, true).await?;
        Ok(group::NONE)
    }
}
