//! One client's session as a state machine without I/O (rumqttc `state.rs` style): each
//! method takes a packet or an event and returns the [`Action`]s the connection driver
//! performs (send a packet, append a message to the log, commit a log position, close).
//! QoS and acknowledgement rules live here only, so they are unit-tested exhaustively
//! (`session/tests.rs`).
//!
//! Delivery positions: every message delivered from the log carries a [`Ticket`] (its
//! cursor and offset). QoS 0 tickets are done when sent; QoS 1 when PUBACKed; QoS 2 when
//! PUBRECed (the client then holds the message; only PUBREL/PUBCOMP remain). The driver
//! commits a cursor up to its oldest ticket still in flight, so an offline or restarted
//! session resumes from a position in the log, never from a copy of the data.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, PubRel, PubRelReason, Publish, PublishProperties, RetainForwardRule, SubAck,
    SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS;
use smallvec::{smallvec, SmallVec};

use super::codec::{self, Version};
use super::records::{qos_num, Message};
use super::topic;
use crate::acl::{Grants, Op};

/// Options of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubOptions {
    pub(crate) qos: QoS,
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    /// 0: send retained on subscribe, 1: only if the subscription is new, 2: never.
    pub(crate) retain_handling: u8,
    pub(crate) id: Option<usize>,
}

/// Tickets with this bit in `cursor` come from a share group (the rest is a handle the
/// connection maps to the group's cursor), not from one of the session's own cursors.
pub(crate) const SHARED_TICKET: u32 = 1 << 31;

/// Where a delivered message came from in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Ticket {
    pub(crate) cursor: u32,
    pub(crate) offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// What an outgoing QoS 1/2 delivery waits for.
enum OutState {
    Ack,
    Received,
    Complete,
}

#[derive(Debug, Clone)]
struct Outgoing {
    publish: Publish,
    state: OutState,
    ticket: Option<Ticket>,
}

/// The actions one packet or event leads to (one or two: a publish to append, an
/// acknowledgement to send, a SUBACK and the subscriptions), kept inline so that they
/// allocate no list.
pub(crate) type Actions = SmallVec<[Action; 2]>;

/// A packet the session answers with. The acknowledgements (one per QoS 1/2 publish
/// either way) are inline; the rest is boxed, so that an [`Action`] stays small (it is
/// moved through the connection's futures; a `Packet` is ~400 bytes).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    PubAck(PubAck),
    PubRec(PubRec),
    PubRel(PubRel),
    PubComp(PubComp),
    Other(Box<Packet>),
}

impl Reply {
    pub(crate) fn into_packet(self) -> Packet {
        match self {
            Reply::PubAck(a) => Packet::PubAck(a),
            Reply::PubRec(r) => Packet::PubRec(r),
            Reply::PubRel(r) => Packet::PubRel(r),
            Reply::PubComp(c) => Packet::PubComp(c),
            Reply::Other(p) => *p,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Send a packet.
    Send(Reply),
    /// Append `message` to the log, then report with [`Session::appended`].
    Append {
        message: Arc<Message>,
        qos: QoS,
        pkid: u16,
    },
    /// New or replaced subscriptions: index them, open cursors, send retained messages
    /// (`send_retained`) after the SUBACK that precedes this action.
    Subscribed(Vec<(String, SubOptions, bool)>),
    Unsubscribed(Vec<String>),
    /// A delivered message is done: its log position may be committed.
    Done(Ticket),
    /// Close the connection (after sending a DISCONNECT with `reason` on MQTT 5).
    Close {
        reason: Option<DisconnectReasonCode>,
        will: bool,
    },
}

/// Server-side limits applied to the client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) receive_maximum: u16,
    pub(crate) topic_alias_max: u16,
}

/// Client-side limits learned from CONNECT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientLimits {
    pub(crate) receive_maximum: u16,
    pub(crate) max_packet_size: Option<u32>,
    /// Topic aliases the client accepts from the server (MQTT 5 Topic Alias Maximum).
    pub(crate) topic_alias_max: u16,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            receive_maximum: u16::MAX,
            max_packet_size: None,
            topic_alias_max: 0,
        }
    }
}

/// The session state that outlives a connection.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client_id: String,
    pub(crate) version: Version,
    pub(crate) subscriptions: BTreeMap<String, SubOptions>,
    /// Session expiry interval in seconds (`u32::MAX`: never; 0: ends with the connection).
    pub(crate) expiry: u32,
    pub(crate) limits: Limits,
    pub(crate) client: ClientLimits,
    outgoing: BTreeMap<u16, Outgoing>,
    next_pkid: u16,
    incoming_qos2: HashSet<u16>,
    /// QoS 1/2 publishes received and not yet acknowledged (flow control).
    incoming_pending: HashSet<u16>,
    aliases_in: HashMap<u16, Bytes>,
    aliases_out: HashMap<Bytes, u16>,
    /// What this client may publish and subscribe to (`acl`); set per connection.
    pub(crate) grants: Arc<Grants>,
}

fn close(reason: DisconnectReasonCode) -> Action {
    Action::Close {
        reason: Some(reason),
        will: true,
    }
}

impl Session {
    pub(crate) fn new(client_id: String, version: Version, expiry: u32, limits: Limits) -> Session {
        Session {
            client_id,
            version,
            subscriptions: BTreeMap::new(),
            expiry,
            limits,
            client: ClientLimits::default(),
            outgoing: BTreeMap::new(),
            next_pkid: 0,
            incoming_qos2: HashSet::new(),
            incoming_pending: HashSet::new(),
            aliases_in: HashMap::new(),
            aliases_out: HashMap::new(),
            grants: Arc::new(Grants::all()),
        }
    }

    /// A new connection takes over the session: per-connection state resets, and
    /// unfinished outgoing deliveries are sent again (PUBLISH with DUP, or PUBREL).
    pub(crate) fn resume(
        &mut self,
        version: Version,
        client: ClientLimits,
        limits: Limits,
    ) -> Vec<Packet> {
        self.version = version;
        self.client = client;
        self.limits = limits;
        self.aliases_in.clear();
        self.aliases_out.clear();
        self.incoming_pending.clear();
        self.outgoing
            .values()
            .map(|o| match o.state {
                OutState::Ack | OutState::Received => {
                    let mut p = o.publish.clone();
                    p.dup = true;
                    Packet::Publish(p)
                }
                OutState::Complete => Packet::PubRel(PubRel {
                    pkid: o.publish.pkid,
                    reason: PubRelReason::Success,
                    properties: None,
                }),
            })
            .collect()
    }

    /// Log positions still in flight (to compute what may be committed).
    pub(crate) fn tickets_in_flight(&self) -> impl Iterator<Item = Ticket> + '_ {
        self.outgoing
            .values()
            .filter(|o| o.state != OutState::Complete)
            .filter_map(|o| o.ticket)
    }

    /// Whether a QoS 1/2 delivery fits the client's receive maximum.
    pub(crate) fn can_send(&self) -> bool {
        self.outgoing.len() < usize::from(self.client.receive_maximum.max(1))
    }

    /// Handles one packet from the client.
    pub(crate) fn incoming(&mut self, p: Packet) -> Actions {
        match p {
            Packet::Publish(p) => self.publish_in(p),
            Packet::PubAck(a) => match self.outgoing.get(&a.pkid) {
                Some(o) if o.state == OutState::Ack => {
                    let o = self.outgoing.remove(&a.pkid);
                    o.and_then(|o| o.ticket)
                        .map(Action::Done)
                        .into_iter()
                        .collect()
                }
                _ => smallvec![],
            },
            Packet::PubRec(r) => match self.outgoing.get_mut(&r.pkid) {
                Some(o) if o.state == OutState::Received => {
                    let ticket = o.ticket.take();
                    let mut out = Actions::new();
                    if matches!(
                        r.reason,
                        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                    ) {
                        o.state = OutState::Complete;
                        out.push(Action::Send(Reply::PubRel(PubRel {
                            pkid: r.pkid,
                            reason: PubRelReason::Success,
                            properties: None,
                        })));
                    } else {
                        self.outgoing.remove(&r.pkid);
                    }
                    out.extend(ticket.map(Action::Done));
                    out
                }
                _ => smallvec![Action::Send(Reply::PubRel(PubRel {
                    pkid: r.pkid,
                    reason: PubRelReason::PacketIdentifierNotFound,
                    properties: None,
                }))],
            },
            Packet::PubComp(c) => {
                if matches!(self.outgoing.get(&c.pkid), Some(o) if o.state == OutState::Complete) {
                    self.outgoing.remove(&c.pkid);
                }
                smallvec![]
            }
            Packet::PubRel(r) => {
                let known = self.incoming_qos2.remove(&r.pkid);
                let reason = if known {
                    PubCompReason::Success
                } else {
                    PubCompReason::PacketIdentifierNotFound
                };
                smallvec![Action::Send(Reply::PubComp(PubComp {
                    pkid: r.pkid,
                    reason,
                    properties: None,
                }))]
            }
            Packet::Subscribe(s) => self.subscribe(s),
            Packet::Unsubscribe(u) => {
                let mut reasons = Vec::new();
                let mut removed = Vec::new();
                for f in u.filters {
                    if self.subscriptions.remove(&f).is_some() {
                        reasons.push(UnsubAckReason::Success);
                        removed.push(f);
                    } else {
                        reasons.push(UnsubAckReason::NoSubscriptionExisted);
                    }
                }
                smallvec![
                    Action::Send(Reply::Other(Box::new(Packet::UnsubAck(UnsubAck {
                        pkid: u.pkid,
                        reasons,
                        properties: None,
                    })))),
                    Action::Unsubscribed(removed),
                ]
            }
            Packet::PingReq(_) => smallvec![Action::Send(Reply::Other(Box::new(
                Packet::PingResp(PingResp)
            )))],
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.and_then(|p| p.session_expiry_interval) {
                    if self.expiry == 0 && e != 0 {
                        return smallvec![close(DisconnectReasonCode::ProtocolError)];
                    }
                    self.expiry = e;
                }
                let will = d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                smallvec![Action::Close { reason: None, will }]
            }
            Packet::Connect(..) => smallvec![close(DisconnectReasonCode::ProtocolError)],
            // No authentication method was agreed in CONNECT, so AUTH is out of order.
            Packet::Auth(_) => smallvec![close(DisconnectReasonCode::ProtocolError)],
            _ => smallvec![close(DisconnectReasonCode::ProtocolError)],
        }
    }

    fn publish_in(&mut self, mut p: Publish) -> Actions {
        let mut props = p.properties.take();
        if let Some(alias) = props.as_mut().and_then(|x| x.topic_alias.take()) {
            if alias == 0 || alias > self.limits.topic_alias_max {
                return smallvec![close(DisconnectReasonCode::TopicAliasInvalid)];
            }
            if p.topic.is_empty() {
                match self.aliases_in.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return smallvec![close(DisconnectReasonCode::ProtocolError)],
                }
            } else {
                self.aliases_in.insert(alias, p.topic.clone());
            }
        }
        let Ok(name) = std::str::from_utf8(&p.topic) else {
            return smallvec![close(DisconnectReasonCode::TopicNameInvalid)];
        };
        if topic::validate_name(name).is_err() {
            return smallvec![close(DisconnectReasonCode::TopicNameInvalid)];
        }
        if !self.grants.may(Op::Write, name) {
            return self.refuse_publish(name, p.qos, p.pkid);
        }
        if p.qos != QoS::AtMostOnce {
            if p.qos == QoS::ExactlyOnce && self.incoming_qos2.contains(&p.pkid) {
                // A resent QoS 2 publish already in the log: acknowledge it again only.
                return smallvec![Action::Send(pubrec(p.pkid, PubRecReason::Success))];
            }
            if !self.incoming_pending.insert(p.pkid) {
                return smallvec![];
            }
            if self.incoming_pending.len() + self.incoming_qos2.len()
                > usize::from(self.limits.receive_maximum)
            {
                return smallvec![close(DisconnectReasonCode::ReceiveMaximumExceeded)];
            }
        }
        if let Some(x) = props.as_mut() {
            x.subscription_identifiers.clear();
        }
        let props = props.filter(|x| *x != PublishProperties::default());
        let message = Message {
            topic: name.to_string(),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            props,
            timestamp_ms: super::records::now_ms(),
        };
        smallvec![Action::Append {
            message: Arc::new(message),
            qos: p.qos,
            pkid: p.pkid,
        }]
    }

    /// A publish `acl` does not allow: dropped. MQTT 5 acknowledges it with Not
    /// authorized (0x87); 3.1.1 has no such code, and its spec leaves a server the choice
    /// of a positive acknowledgement or closing the connection (MQTT-3.3.5-2): it gets
    /// the acknowledgement, as Mosquitto gives, so a device does not reconnect in a loop.
    fn refuse_publish(&mut self, name: &str, qos: QoS, pkid: u16) -> Actions {
        tracing::debug!(client_id = %self.client_id, topic = name, "publish refused by acl");
        let v5 = self.version == Version::V5;
        match qos {
            QoS::AtMostOnce => smallvec![],
            QoS::AtLeastOnce => smallvec![Action::Send(Reply::PubAck(PubAck {
                pkid,
                reason: if v5 {
                    PubAckReason::NotAuthorized
                } else {
                    PubAckReason::Success
                },
                properties: None,
            }))],
            QoS::ExactlyOnce if v5 => {
                smallvec![Action::Send(pubrec(pkid, PubRecReason::NotAuthorized))]
            }
            QoS::ExactlyOnce => {
                // The PUBREL that follows gets its PUBCOMP.
                self.incoming_qos2.insert(pkid);
                smallvec![Action::Send(pubrec(pkid, PubRecReason::Success))]
            }
        }
    }

    /// Drops the stored subscriptions `acl` no longer allows (the rules changed while
    /// the session was offline); returns them.
    pub(crate) fn drop_refused_subscriptions(&mut self) -> Vec<String> {
        let grants = self.grants.clone();
        let refused: Vec<String> = self
            .subscriptions
            .keys()
            .filter(|k| {
                let (group, filter) =
                    topic::shared(k).map_or((None, k.as_str()), |(g, f)| (Some(g), f));
                !grants.may_subscribe_in(group, filter)
            })
            .cloned()
            .collect();
        for k in &refused {
            self.subscriptions.remove(k);
        }
        refused
    }

    /// Reports the outcome of an [`Action::Append`].
    pub(crate) fn appended(&mut self, qos: QoS, pkid: u16, ok: bool) -> Actions {
        self.incoming_pending.remove(&pkid);
        match qos {
            QoS::AtMostOnce => smallvec![],
            _ if !ok && self.version == Version::V4 => smallvec![Action::Close {
                reason: None,
                will: true,
            }],
            QoS::AtLeastOnce => {
                let reason = if ok {
                    PubAckReason::Success
                } else {
                    PubAckReason::ImplementationSpecificError
                };
                smallvec![Action::Send(Reply::PubAck(PubAck {
                    pkid,
                    reason,
                    properties: None,
                }))]
            }
            QoS::ExactlyOnce => {
                if ok {
                    self.incoming_qos2.insert(pkid);
                    smallvec![Action::Send(pubrec(pkid, PubRecReason::Success))]
                } else {
                    smallvec![Action::Send(pubrec(
                        pkid,
                        PubRecReason::ImplementationSpecificError,
                    ))]
                }
            }
        }
    }

    fn subscribe(&mut self, s: rumqttc::v5::mqttbytes::v5::Subscribe) -> Actions {
        let id = s.properties.as_ref().and_then(|p| p.id);
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut added = Vec::new();
        for f in s.filters {
            let (group, filter) = match topic::shared(&f.path) {
                Some((group, _)) if group.is_empty() || group.contains(['+', '#']) => {
                    codes.push(SubscribeReasonCode::TopicFilterInvalid);
                    continue;
                }
                Some((group, filter)) => (Some(group), filter),
                None => (None, f.path.as_str()),
            };
            if f.path.starts_with("$share/") && topic::shared(&f.path).is_none() {
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            }
            if topic::validate_filter(filter).is_err() {
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            }
            if !self.grants.may_subscribe_in(group, filter) {
                tracing::debug!(client_id = %self.client_id, filter = %f.path, "subscribe refused by acl");
                codes.push(SubscribeReasonCode::NotAuthorized);
                continue;
            }
            let opts = SubOptions {
                qos: f.qos,
                no_local: f.nolocal,
                retain_as_published: f.preserve_retain,
                retain_handling: match f.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => 0,
                    RetainForwardRule::OnNewSubscribe => 1,
                    RetainForwardRule::Never => 2,
                },
                id,
            };
            let is_new = self
                .subscriptions
                .insert(f.path.clone(), opts.clone())
                .is_none();
            codes.push(SubscribeReasonCode::Success(f.qos));
            added.push((f.path, opts, is_new));
        }
        let ack = Reply::Other(Box::new(Packet::SubAck(SubAck {
            pkid: s.pkid,
            return_codes: codes,
            properties: None,
        })));
        smallvec![Action::Send(ack), Action::Subscribed(added)]
    }

    /// Builds the PUBLISH delivering `m` to this client, or `None` if no subscription
    /// wants it (no match, no-local, expired, too large for the client). `ticket` is its
    /// log position (none for retained messages); `from_self` says the publisher was
    /// this client; `retained` marks a retained message sent on subscribe.
    /// For QoS 1/2 the caller checks [`Session::can_send`] first.
    pub(crate) fn deliver(
        &mut self,
        m: &Message,
        ticket: Option<Ticket>,
        from_self: bool,
        retained: bool,
        now_ms: i64,
    ) -> (Option<Packet>, Option<Action>) {
        let done = ticket.map(Action::Done);
        if m.expired(now_ms) || self.grants.denies(&m.topic) {
            return (None, done);
        }
        let mut qos: Option<QoS> = None;
        let mut ids = Vec::new();
        let mut rap = false;
        for (f, o) in &self.subscriptions {
            if !topic::matches(f, &m.topic) || (o.no_local && from_self) {
                continue;
            }
            let q = min_qos(o.qos, m.qos);
            qos = Some(match qos {
                Some(cur) if qos_num(cur) >= qos_num(q) => cur,
                _ => q,
            });
            ids.extend(o.id);
            rap |= o.retain_as_published;
        }
        let Some(qos) = qos else { return (None, done) };
        self.build(m, ticket, qos, ids, retained || (rap && m.retain), now_ms)
    }

    /// Builds the PUBLISH delivering `m` through the shared subscription `key` only
    /// (`$share/<group>/<filter>`); like [`Session::deliver`] otherwise (no-local does
    /// not apply to shared subscriptions).
    pub(crate) fn deliver_shared(
        &mut self,
        key: &str,
        m: &Message,
        ticket: Ticket,
        now_ms: i64,
    ) -> (Option<Packet>, Option<Action>) {
        let done = Some(Action::Done(ticket));
        let Some(o) = self.subscriptions.get(key) else {
            return (None, done);
        };
        // A member denied the topic skips it: the group moves on without it.
        if m.expired(now_ms) || self.grants.denies(&m.topic) {
            return (None, done);
        }
        let (qos, ids) = (min_qos(o.qos, m.qos), o.id.into_iter().collect());
        let retain = o.retain_as_published && m.retain;
        self.build(m, Some(ticket), qos, ids, retain, now_ms)
    }

    /// Removes unfinished deliveries of shared subscriptions (their groups give them
    /// to other members), so that a resumed session does not send them again.
    pub(crate) fn drop_shared(&mut self) {
        self.outgoing.retain(|_, o| {
            o.state == OutState::Complete || o.ticket.is_none_or(|t| t.cursor & SHARED_TICKET == 0)
        });
    }

    fn build(
        &mut self,
        m: &Message,
        ticket: Option<Ticket>,
        qos: QoS,
        ids: Vec<usize>,
        retain: bool,
        now_ms: i64,
    ) -> (Option<Packet>, Option<Action>) {
        let done = ticket.map(Action::Done);
        let mut props = m.props.clone().unwrap_or_default();
        props.subscription_identifiers = ids;
        props.message_expiry_interval = m.remaining_expiry(now_ms);
        let props =
            (self.version == Version::V5 && props != PublishProperties::default()).then_some(props);
        let mut publish = Publish {
            dup: false,
            qos,
            retain,
            topic: Bytes::copy_from_slice(m.topic.as_bytes()),
            pkid: 0,
            payload: m.payload.clone(),
            properties: props,
        };
        if qos != QoS::AtMostOnce {
            publish.pkid = self.next_pkid();
        }
        // Topic aliases apply to this connection's copy only; a resend after a reconnect
        // carries the full name.
        let mut wire = publish.clone();
        let mut new_alias = None;
        if self.version == Version::V5 && self.client.topic_alias_max > 0 {
            let alias = match self.aliases_out.get(&wire.topic) {
                Some(&a) => {
                    wire.topic = Bytes::new();
                    Some(a)
                }
                None if self.aliases_out.len() < usize::from(self.client.topic_alias_max) => {
                    let a = self.aliases_out.len() as u16 + 1;
                    new_alias = Some((wire.topic.clone(), a));
                    Some(a)
                }
                None => None,
            };
            if let Some(a) = alias {
                wire.properties
                    .get_or_insert_with(Default::default)
                    .topic_alias = Some(a);
            }
        }
        let packet = Packet::Publish(wire);
        if let Some(max) = self.client.max_packet_size {
            if codec::encoded_len(&packet) > max as usize {
                return (None, done);
            }
        }
        if let Some((topic, a)) = new_alias {
            self.aliases_out.insert(topic, a);
        }
        if qos == QoS::AtMostOnce {
            return (Some(packet), done);
        }
        let state = if qos == QoS::AtLeastOnce {
            OutState::Ack
        } else {
            OutState::Received
        };
        self.outgoing.insert(
            publish.pkid,
            Outgoing {
                publish,
                state,
                ticket,
            },
        );
        (Some(packet), None)
    }

    fn next_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.outgoing.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Whether any subscription filter matches `topic`.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.subscriptions.keys().any(|f| topic::matches(f, name))
    }
}

fn pubrec(pkid: u16, reason: PubRecReason) -> Reply {
    Reply::PubRec(PubRec {
        pkid,
        reason,
        properties: None,
    })
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if qos_num(a) <= qos_num(b) {
        a
    } else {
        b
    }
}
