//! The session state machine, packet by packet.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    Connect, Disconnect, DisconnectProperties, DisconnectReasonCode, Filter, Packet, PingReq,
    PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason,
    Publish, PublishProperties, RetainForwardRule, SubAck, Subscribe, SubscribeProperties,
    SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;

use super::codec::Version;
use super::records::Message;
use super::session::*;

const LIMITS: Limits = Limits {
    receive_maximum: 2,
    topic_alias_max: 4,
};

fn session(v: Version) -> Session {
    Session::new("me".into(), v, 0, LIMITS)
}

fn publish(topic: &str, qos: QoS, pkid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        pkid,
        payload: Bytes::from_static(b"p"),
        properties: None,
    }
}

fn msg(topic: &str, qos: QoS) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::from_static(b"m"),
        qos,
        retain: false,
        props: None,
        timestamp_ms: 0,
    }
}

fn filter(path: &str, qos: QoS) -> Filter {
    Filter {
        path: path.into(),
        qos,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    }
}

fn subscribe(s: &mut Session, filters: Vec<Filter>, id: Option<usize>) -> Vec<Action> {
    let properties = id.map(|id| SubscribeProperties {
        id: Some(id),
        user_properties: vec![],
    });
    s.incoming(Packet::Subscribe(Subscribe {
        pkid: 1,
        filters,
        properties,
    }))
    .into_vec()
}

fn appended(actions: Actions) -> (Message, QoS, u16) {
    match actions.as_slice() {
        [Action::Append { message, qos, pkid }] => ((**message).clone(), *qos, *pkid),
        other => panic!("expected one append, got {other:?}"),
    }
}

fn is_close(actions: &[Action], reason: DisconnectReasonCode) -> bool {
    matches!(actions, [Action::Close { reason: Some(r), will: true }] if *r == reason)
}

#[test]
fn qos0_publish_is_appended_without_ack() {
    let mut s = session(Version::V4);
    let (m, qos, _) = appended(s.incoming(Packet::Publish(publish("a/b", QoS::AtMostOnce, 0))));
    assert_eq!((m.topic.as_str(), qos), ("a/b", QoS::AtMostOnce));
    assert!(s.appended(QoS::AtMostOnce, 0, true).is_empty());
}

#[test]
fn qos1_publish_is_acked_after_the_append() {
    let mut s = session(Version::V5);
    let (_, qos, pkid) = appended(s.incoming(Packet::Publish(publish("a", QoS::AtLeastOnce, 9))));
    let ack = s.appended(qos, pkid, true);
    assert_eq!(
        ack.to_vec(),
        vec![Action::Send(Reply::PubAck(PubAck {
            pkid: 9,
            reason: PubAckReason::Success,
            properties: None
        }))]
    );
    let (_, qos, pkid) = appended(s.incoming(Packet::Publish(publish("a", QoS::AtLeastOnce, 10))));
    let nack = s.appended(qos, pkid, false);
    assert!(
        matches!(&nack[..], [Action::Send(Reply::PubAck(a))] if a.reason == PubAckReason::ImplementationSpecificError)
    );
    // 3.1.1 has no negative ack: the connection closes.
    let mut s = session(Version::V4);
    let (_, qos, pkid) = appended(s.incoming(Packet::Publish(publish("a", QoS::AtLeastOnce, 1))));
    assert!(matches!(
        &s.appended(qos, pkid, false)[..],
        [Action::Close {
            reason: None,
            will: true
        }]
    ));
}

#[test]
fn qos2_publish_is_appended_once() {
    let mut s = session(Version::V4);
    let (_, qos, pkid) = appended(s.incoming(Packet::Publish(publish("a", QoS::ExactlyOnce, 5))));
    let rec = Action::Send(Reply::PubRec(PubRec {
        pkid: 5,
        reason: PubRecReason::Success,
        properties: None,
    }));
    assert_eq!(s.appended(qos, pkid, true).to_vec(), vec![rec.clone()]);
    // The client resends (lost PUBREC): acknowledged again, not appended again.
    let mut again = publish("a", QoS::ExactlyOnce, 5);
    again.dup = true;
    assert_eq!(s.incoming(Packet::Publish(again)).to_vec(), vec![rec]);
    let comp = s.incoming(Packet::PubRel(PubRel {
        pkid: 5,
        reason: PubRelReason::Success,
        properties: None,
    }));
    assert_eq!(
        comp.to_vec(),
        vec![Action::Send(Reply::PubComp(PubComp {
            pkid: 5,
            reason: PubCompReason::Success,
            properties: None
        }))]
    );
    // After PUBCOMP the id is free: a new publish with it is a new message.
    assert!(matches!(
        &s.incoming(Packet::Publish(publish("a", QoS::ExactlyOnce, 5)))[..],
        [Action::Append { .. }]
    ));
    let unknown = s.incoming(Packet::PubRel(PubRel {
        pkid: 77,
        reason: PubRelReason::Success,
        properties: None,
    }));
    assert!(
        matches!(&unknown[..], [Action::Send(Reply::PubComp(c))] if c.reason == PubCompReason::PacketIdentifierNotFound)
    );
}

#[test]
fn receive_maximum_is_enforced() {
    let mut s = session(Version::V5);
    for pkid in 1..=2 {
        appended(s.incoming(Packet::Publish(publish("a", QoS::AtLeastOnce, pkid))));
    }
    let over = s.incoming(Packet::Publish(publish("a", QoS::AtLeastOnce, 3)));
    assert!(
        is_close(&over, DisconnectReasonCode::ReceiveMaximumExceeded),
        "{over:?}"
    );
}

#[test]
fn topic_aliases_in() {
    let mut s = session(Version::V5);
    let mut p = publish("long/topic", QoS::AtMostOnce, 0);
    p.properties = Some(PublishProperties {
        topic_alias: Some(3),
        ..Default::default()
    });
    let (m, _, _) = appended(s.incoming(Packet::Publish(p)));
    assert_eq!(m.topic, "long/topic");
    assert_eq!(m.props, None, "the alias does not travel with the message");
    let mut p = publish("", QoS::AtMostOnce, 0);
    p.properties = Some(PublishProperties {
        topic_alias: Some(3),
        ..Default::default()
    });
    assert_eq!(
        appended(s.incoming(Packet::Publish(p))).0.topic,
        "long/topic"
    );
    let mut p = publish("", QoS::AtMostOnce, 0);
    p.properties = Some(PublishProperties {
        topic_alias: Some(2),
        ..Default::default()
    });
    assert!(is_close(
        &s.incoming(Packet::Publish(p)),
        DisconnectReasonCode::ProtocolError
    ));
    let mut p = publish("x", QoS::AtMostOnce, 0);
    p.properties = Some(PublishProperties {
        topic_alias: Some(5),
        ..Default::default()
    });
    assert!(is_close(
        &s.incoming(Packet::Publish(p)),
        DisconnectReasonCode::TopicAliasInvalid
    ));
}

#[test]
fn invalid_topics_and_out_of_order_packets_close() {
    let mut s = session(Version::V5);
    for t in ["a/+", "#", ""] {
        assert!(is_close(
            &s.incoming(Packet::Publish(publish(t, QoS::AtMostOnce, 0))),
            DisconnectReasonCode::TopicNameInvalid
        ));
    }
    let mut p = publish("x", QoS::AtMostOnce, 0);
    p.topic = Bytes::from_static(&[0xff, 0xfe]);
    assert!(is_close(
        &s.incoming(Packet::Publish(p)),
        DisconnectReasonCode::TopicNameInvalid
    ));
    let c = Connect {
        keep_alive: 0,
        client_id: "x".into(),
        clean_start: true,
        properties: None,
    };
    assert!(is_close(
        &s.incoming(Packet::Connect(c, None, None)),
        DisconnectReasonCode::ProtocolError
    ));
    let suback = SubAck {
        pkid: 1,
        return_codes: vec![],
        properties: None,
    };
    assert!(is_close(
        &s.incoming(Packet::SubAck(suback)),
        DisconnectReasonCode::ProtocolError
    ));
}

#[test]
fn subscribe_and_unsubscribe() {
    let mut s = session(Version::V5);
    let a = subscribe(
        &mut s,
        vec![
            filter("a/+", QoS::AtLeastOnce),
            filter("a/#/b", QoS::AtMostOnce),
            filter("$share/g/x", QoS::AtMostOnce),
            filter("$share/g+/x", QoS::AtMostOnce),
            filter("$share/g", QoS::AtMostOnce),
        ],
        Some(7),
    );
    let Action::Send(Reply::Other(p)) = &a[0] else {
        panic!("{a:?}")
    };
    let Packet::SubAck(ack) = &**p else {
        panic!("{a:?}")
    };
    assert_eq!(
        ack.return_codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::TopicFilterInvalid,
            SubscribeReasonCode::Success(QoS::AtMostOnce),
            SubscribeReasonCode::TopicFilterInvalid,
            SubscribeReasonCode::TopicFilterInvalid,
        ]
    );
    let Action::Subscribed(list) = &a[1] else {
        panic!("{a:?}")
    };
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].0, "$share/g/x");
    assert_eq!(
        (list[0].0.as_str(), list[0].1.id, list[0].2),
        ("a/+", Some(7), true)
    );
    // Subscribing again replaces the options and is not new.
    let a = subscribe(&mut s, vec![filter("a/+", QoS::ExactlyOnce)], None);
    let Action::Subscribed(list) = &a[1] else {
        panic!("{a:?}")
    };
    assert!(!list[0].2);
    assert_eq!(s.subscriptions["a/+"].qos, QoS::ExactlyOnce);
    let a = s.incoming(Packet::Unsubscribe(Unsubscribe {
        pkid: 2,
        filters: vec!["a/+".into(), "zz".into()],
        properties: None,
    }));
    assert_eq!(
        a.to_vec(),
        vec![
            Action::Send(Reply::Other(Box::new(Packet::UnsubAck(UnsubAck {
                pkid: 2,
                reasons: vec![
                    UnsubAckReason::Success,
                    UnsubAckReason::NoSubscriptionExisted
                ],
                properties: None
            })))),
            Action::Unsubscribed(vec!["a/+".into()]),
        ]
    );
    assert_eq!(
        s.subscriptions.keys().collect::<Vec<_>>(),
        vec!["$share/g/x"]
    );
}

#[test]
fn delivery_qos_is_the_minimum_and_overlaps_deliver_once() {
    let mut s = session(Version::V5);
    subscribe(&mut s, vec![filter("a/+", QoS::AtLeastOnce)], Some(1));
    subscribe(&mut s, vec![filter("a/#", QoS::AtMostOnce)], Some(2));
    let t = Ticket {
        cursor: 0,
        offset: 10,
    };
    let (p, done) = s.deliver(&msg("a/b", QoS::ExactlyOnce), Some(t), false, false, 0);
    let Some(Packet::Publish(p)) = p else {
        panic!()
    };
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let mut ids = p.properties.expect("props").subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(done, None, "qos 1 is done on PUBACK");
    assert_eq!(s.tickets_in_flight().collect::<Vec<_>>(), vec![t]);
    let done = s.incoming(Packet::PubAck(PubAck {
        pkid: p.pkid,
        reason: PubAckReason::Success,
        properties: None,
    }));
    assert_eq!(done.to_vec(), vec![Action::Done(t)]);
    assert_eq!(s.tickets_in_flight().count(), 0);
    // QoS 0 deliveries are done at once; non-matching messages are skipped but done.
    let t2 = Ticket {
        cursor: 0,
        offset: 11,
    };
    let (p, done) = s.deliver(&msg("a/b", QoS::AtMostOnce), Some(t2), false, false, 0);
    assert!(matches!(p, Some(Packet::Publish(ref x)) if x.qos == QoS::AtMostOnce && x.pkid == 0));
    assert_eq!(done, Some(Action::Done(t2)));
    let (p, done) = s.deliver(&msg("b", QoS::AtLeastOnce), Some(t2), false, false, 0);
    assert_eq!((p, done), (None, Some(Action::Done(t2))));
}

#[test]
fn qos2_delivery_flow() {
    let mut s = session(Version::V4);
    subscribe(&mut s, vec![filter("#", QoS::ExactlyOnce)], None);
    let t = Ticket {
        cursor: 3,
        offset: 1,
    };
    let (Some(Packet::Publish(p)), None) =
        s.deliver(&msg("x", QoS::ExactlyOnce), Some(t), false, false, 0)
    else {
        panic!()
    };
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert!(p.properties.is_none(), "no properties over 3.1.1");
    let a = s.incoming(Packet::PubRec(PubRec {
        pkid: p.pkid,
        reason: PubRecReason::Success,
        properties: None,
    }));
    assert_eq!(
        a.to_vec(),
        vec![
            Action::Send(Reply::PubRel(PubRel {
                pkid: p.pkid,
                reason: PubRelReason::Success,
                properties: None
            })),
            Action::Done(t)
        ]
    );
    assert!(!s.can_send() || s.tickets_in_flight().count() == 0);
    assert!(s
        .incoming(Packet::PubComp(PubComp {
            pkid: p.pkid,
            reason: PubCompReason::Success,
            properties: None
        }))
        .is_empty());
    // The id is free again.
    assert!(s.can_send());
}

#[test]
fn flow_control_and_resume() {
    let mut s = session(Version::V5);
    s.client.receive_maximum = 2;
    subscribe(&mut s, vec![filter("t", QoS::AtLeastOnce)], None);
    let mut ids = Vec::new();
    for o in 0..2 {
        assert!(s.can_send());
        let (Some(Packet::Publish(p)), _) = s.deliver(
            &msg("t", QoS::AtLeastOnce),
            Some(Ticket {
                cursor: 0,
                offset: o,
            }),
            false,
            false,
            0,
        ) else {
            panic!()
        };
        ids.push(p.pkid);
    }
    assert!(!s.can_send(), "receive maximum of the client reached");
    assert_ne!(ids[0], ids[1]);
    let again = s.resume(Version::V5, ClientLimits::default(), LIMITS);
    assert_eq!(again.len(), 2);
    assert!(again
        .iter()
        .all(|p| matches!(p, Packet::Publish(x) if x.dup)));
    s.incoming(Packet::PubAck(PubAck {
        pkid: ids[0],
        reason: PubAckReason::Success,
        properties: None,
    }));
    assert!(s.can_send());
}

#[test]
fn no_local_retain_as_published_and_limits() {
    let mut s = session(Version::V5);
    let mut f = filter("t", QoS::AtMostOnce);
    f.nolocal = true;
    f.preserve_retain = true;
    subscribe(&mut s, vec![f], None);
    let mut m = msg("t", QoS::AtMostOnce);
    m.retain = true;
    assert_eq!(
        s.deliver(&m, None, true, false, 0).0,
        None,
        "no-local skips own messages"
    );
    let (Some(Packet::Publish(p)), _) = s.deliver(&m, None, false, false, 0) else {
        panic!()
    };
    assert!(p.retain, "retain as published");
    s.client.max_packet_size = Some(6);
    assert_eq!(
        s.deliver(&m, None, false, false, 0).0,
        None,
        "too large for the client"
    );
    s.client.max_packet_size = None;
    m.props = Some(PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    });
    assert_eq!(s.deliver(&m, None, false, false, 1_000).0, None, "expired");
    let (Some(Packet::Publish(p)), _) = s.deliver(&m, None, false, false, 500) else {
        panic!()
    };
    assert_eq!(
        p.properties.and_then(|x| x.message_expiry_interval),
        Some(1)
    );
}

#[test]
fn retained_on_subscribe_has_the_retain_flag() {
    let mut s = session(Version::V4);
    subscribe(&mut s, vec![filter("t", QoS::AtLeastOnce)], None);
    let (Some(Packet::Publish(p)), _) =
        s.deliver(&msg("t", QoS::AtLeastOnce), None, false, true, 0)
    else {
        panic!()
    };
    assert!(p.retain);
    let (Some(Packet::Publish(p)), _) =
        s.deliver(&msg("t", QoS::AtLeastOnce), None, false, false, 0)
    else {
        panic!()
    };
    assert!(!p.retain);
}

#[test]
fn ping_and_disconnect() {
    let mut s = session(Version::V5);
    assert!(matches!(
        &s.incoming(Packet::PingReq(PingReq))[..],
        [Action::Send(Reply::Other(p))] if matches!(**p, Packet::PingResp(_))
    ));
    let normal = Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties: None,
    };
    assert_eq!(
        s.incoming(Packet::Disconnect(normal)).to_vec(),
        vec![Action::Close {
            reason: None,
            will: false
        }]
    );
    let with_will = Disconnect {
        reason_code: DisconnectReasonCode::DisconnectWithWillMessage,
        properties: None,
    };
    assert_eq!(
        s.incoming(Packet::Disconnect(with_will)).to_vec(),
        vec![Action::Close {
            reason: None,
            will: true
        }]
    );
    // Expiry 0 at CONNECT cannot be raised at DISCONNECT.
    let props = DisconnectProperties {
        session_expiry_interval: Some(60),
        reason_string: None,
        user_properties: vec![],
        server_reference: None,
    };
    let raise = Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties: Some(props.clone()),
    };
    assert!(is_close(
        &s.incoming(Packet::Disconnect(raise)),
        DisconnectReasonCode::ProtocolError
    ));
    let mut s = Session::new("me".into(), Version::V5, 10, LIMITS);
    let change = Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties: Some(props),
    };
    s.incoming(Packet::Disconnect(change));
    assert_eq!(s.expiry, 60);
}

#[test]
fn topic_aliases_out() {
    let mut s = session(Version::V5);
    s.client.topic_alias_max = 1;
    subscribe(&mut s, vec![filter("#", QoS::AtMostOnce)], None);
    let publish_of = |p: Option<Packet>| match p {
        Some(Packet::Publish(p)) => p,
        other => panic!("{other:?}"),
    };
    let first = publish_of(
        s.deliver(&msg("a/b", QoS::AtMostOnce), None, false, false, 0)
            .0,
    );
    assert_eq!(
        (
            &first.topic[..],
            first.properties.and_then(|p| p.topic_alias)
        ),
        (&b"a/b"[..], Some(1))
    );
    let second = publish_of(
        s.deliver(&msg("a/b", QoS::AtMostOnce), None, false, false, 0)
            .0,
    );
    assert_eq!(
        (
            &second.topic[..],
            second.properties.and_then(|p| p.topic_alias)
        ),
        (&b""[..], Some(1))
    );
    // The maximum is reached: other topics go by name.
    let other = publish_of(
        s.deliver(&msg("c", QoS::AtMostOnce), None, false, false, 0)
            .0,
    );
    assert_eq!(
        (
            &other.topic[..],
            other.properties.and_then(|p| p.topic_alias)
        ),
        (&b"c"[..], None)
    );
    // A new connection starts without aliases.
    s.resume(
        Version::V5,
        ClientLimits {
            topic_alias_max: 1,
            ..ClientLimits::default()
        },
        LIMITS,
    );
    let again = publish_of(
        s.deliver(&msg("a/b", QoS::AtMostOnce), None, false, false, 0)
            .0,
    );
    assert_eq!(
        (
            &again.topic[..],
            again.properties.and_then(|p| p.topic_alias)
        ),
        (&b"a/b"[..], Some(1))
    );
}

#[test]
fn shared_deliveries_use_their_subscription_only_and_are_dropped_on_leave() {
    let mut s = session(Version::V5);
    subscribe(&mut s, vec![filter("$share/g/a/#", QoS::AtLeastOnce)], None);
    // A normal delivery does not match the shared filter (the group delivers it).
    let (p, _) = s.deliver(&msg("a/b", QoS::AtLeastOnce), None, false, false, 0);
    assert!(p.is_none());
    let t = Ticket {
        cursor: SHARED_TICKET | 1,
        offset: 5,
    };
    let (p, done) = s.deliver_shared("$share/g/a/#", &msg("a/b", QoS::ExactlyOnce), t, 0);
    let Some(Packet::Publish(p)) = p else {
        panic!("{p:?}")
    };
    assert_eq!((p.qos, done), (QoS::AtLeastOnce, None));
    assert_eq!(s.tickets_in_flight().collect::<Vec<_>>(), vec![t]);
    // Unknown subscription: nothing sent, the ticket is done at once.
    let (p, done) = s.deliver_shared("$share/h/a/#", &msg("a/b", QoS::AtLeastOnce), t, 0);
    assert_eq!((p, done), (None, Some(Action::Done(t))));
    s.drop_shared();
    assert_eq!(s.tickets_in_flight().count(), 0);
    assert!(s
        .resume(Version::V5, ClientLimits::default(), LIMITS)
        .is_empty());
}

#[test]
fn actions_stay_small() {
    // Moved through the connection's futures for every packet (was 392 bytes).
    assert!(
        std::mem::size_of::<Action>() <= 96,
        "{}",
        std::mem::size_of::<Action>()
    );
}

/// A session under `acl`: alice may read `a/#` and write `a/up` only.
fn restricted(v: Version) -> Session {
    let rule = crate::acl::RuleConfig {
        user: "alice".into(),
        read: vec!["a/#".into()],
        write: vec!["a/up".into()],
        admin: vec![],
        deny: vec!["a/secret".into()],
        groups: vec!["g".into()],
    };
    let acl = crate::acl::Acl::new(&[rule], |u| u == "alice").expect("acl");
    let mut s = session(v);
    s.grants = std::sync::Arc::new(acl.grants(Some("alice"), Some("me")));
    s
}

#[test]
fn acl_refuses_filters_outside_the_read_grants_one_by_one() {
    for v in [Version::V4, Version::V5] {
        let mut s = restricted(v);
        let a = subscribe(
            &mut s,
            vec![
                filter("a/+", QoS::AtLeastOnce),
                filter("#", QoS::AtLeastOnce),
                filter("$share/g/a/#", QoS::AtMostOnce),
                filter("$share/g/b/#", QoS::AtMostOnce),
                filter("$share/h/a/#", QoS::AtMostOnce),
            ],
            None,
        );
        let [Action::Send(Reply::Other(ack)), Action::Subscribed(added)] = &a[..] else {
            panic!("{a:?}")
        };
        let Packet::SubAck(ack) = &**ack else {
            panic!("{ack:?}")
        };
        assert_eq!(
            ack.return_codes,
            [
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::NotAuthorized,
                SubscribeReasonCode::Success(QoS::AtMostOnce),
                SubscribeReasonCode::NotAuthorized,
                // Readable filter, but a share group the rules do not grant.
                SubscribeReasonCode::NotAuthorized,
            ]
        );
        let paths: Vec<&str> = added.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(paths, ["a/+", "$share/g/a/#"]);
        assert_eq!(s.subscriptions.len(), 2);
    }
}

#[test]
fn acl_drops_refused_publishes_with_the_versions_answer() {
    // MQTT 5: Not authorized, nothing appended.
    let mut s = restricted(Version::V5);
    assert!(s
        .incoming(Packet::Publish(publish("b/x", QoS::AtMostOnce, 0)))
        .is_empty());
    let a = s.incoming(Packet::Publish(publish("b/x", QoS::AtLeastOnce, 1)));
    assert!(
        matches!(&a[..], [Action::Send(Reply::PubAck(p))] if p.reason == PubAckReason::NotAuthorized && p.pkid == 1),
        "{a:?}"
    );
    let a = s.incoming(Packet::Publish(publish("b/x", QoS::ExactlyOnce, 2)));
    assert!(
        matches!(&a[..], [Action::Send(Reply::PubRec(p))] if p.reason == PubRecReason::NotAuthorized),
        "{a:?}"
    );
    // Refused publishes take no receive-maximum slot (the limit is 2).
    for pkid in 3..6 {
        let a = s.incoming(Packet::Publish(publish("b/x", QoS::AtLeastOnce, pkid)));
        assert!(matches!(&a[..], [Action::Send(Reply::PubAck(_))]), "{a:?}");
    }
    let (m, _, _) = appended(s.incoming(Packet::Publish(publish("a/up", QoS::AtLeastOnce, 9))));
    assert_eq!(m.topic, "a/up");
    // 3.1.1: a positive acknowledgement (MQTT-3.3.5-2), still nothing appended; a QoS 2
    // flow completes.
    let mut s = restricted(Version::V4);
    let a = s.incoming(Packet::Publish(publish("b/x", QoS::AtLeastOnce, 1)));
    assert!(
        matches!(&a[..], [Action::Send(Reply::PubAck(p))] if p.reason == PubAckReason::Success),
        "{a:?}"
    );
    let a = s.incoming(Packet::Publish(publish("b/x", QoS::ExactlyOnce, 2)));
    assert!(
        matches!(&a[..], [Action::Send(Reply::PubRec(p))] if p.reason == PubRecReason::Success),
        "{a:?}"
    );
    let a = s.incoming(Packet::PubRel(PubRel {
        pkid: 2,
        reason: PubRelReason::Success,
        properties: None,
    }));
    assert!(
        matches!(&a[..], [Action::Send(Reply::PubComp(c))] if c.reason == PubCompReason::Success),
        "{a:?}"
    );
}

#[test]
fn acl_narrowed_while_offline_drops_stored_subscriptions() {
    let mut s = session(Version::V5);
    subscribe(
        &mut s,
        vec![
            filter("a/b", QoS::AtLeastOnce),
            filter("b/#", QoS::AtLeastOnce),
            filter("$share/g/b/c", QoS::AtLeastOnce),
        ],
        None,
    );
    assert_eq!(s.subscriptions.len(), 3);
    s.grants = restricted(Version::V5).grants;
    let mut dropped = s.drop_refused_subscriptions();
    dropped.sort();
    assert_eq!(dropped, ["$share/g/b/c", "b/#"]);
    assert_eq!(s.subscriptions.keys().collect::<Vec<_>>(), ["a/b"]);
}

#[test]
fn acl_denied_topics_are_skipped_by_wider_subscriptions() {
    let mut s = restricted(Version::V5);
    subscribe(&mut s, vec![filter("a/#", QoS::AtLeastOnce)], None);
    subscribe(&mut s, vec![filter("$share/g/a/#", QoS::AtLeastOnce)], None);
    assert_eq!(
        s.subscriptions.len(),
        2,
        "a/# overlaps a/secret but is granted"
    );
    let t = Ticket {
        cursor: 1,
        offset: 7,
    };
    let (p, done) = s.deliver(&msg("a/secret", QoS::AtLeastOnce), Some(t), false, false, 0);
    assert_eq!((p, done), (None, Some(Action::Done(t))));
    let (p, _) = s.deliver(&msg("a/open", QoS::AtLeastOnce), Some(t), false, false, 0);
    assert!(matches!(p, Some(Packet::Publish(_))));
    let t = Ticket {
        cursor: SHARED_TICKET | 1,
        offset: 8,
    };
    let secret = msg("a/secret", QoS::AtLeastOnce);
    let (p, done) = s.deliver_shared("$share/g/a/#", &secret, t, 0);
    assert_eq!((p, done), (None, Some(Action::Done(t))));
}
