"""MQTT 5 features with paho's v5 client: properties end to end, subscription options,
identifiers, topic aliases, expiry, limits advertised in CONNACK, reason codes."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqtt_fixtures import Mqtt, mqtt_cloud, props  # noqa: F401


def test_connack_advertises_limits_and_assigns_client_ids(mqtt_cloud):
    c = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="", keepalive=0)
    _, rc, p = c.connack
    assert rc.value == 0
    assert p.AssignedClientIdentifier.startswith("auto-")
    assert p.ReceiveMaximum == 1024
    assert p.MaximumPacketSize == 1 << 20
    assert p.TopicAliasMaximum == 64
    assert p.ServerKeepAlive == 3600, "keep alive 0 is capped by mqtt.max_keep_alive_secs"
    assert p.SharedSubscriptionAvailable == 1
    assert p.SubscriptionIdentifierAvailable == 1


def test_request_response_properties_round_trip(mqtt_cloud):
    sub = Mqtt(mqtt_cloud.mqtt_port, 5)
    sub.subscribe("rr/req", qos=1)
    pub = Mqtt(mqtt_cloud.mqtt_port, 5)
    p = props(ResponseTopic="rr/resp", CorrelationData=b"\x00\x01id", ContentType="text/plain",
              PayloadFormatIndicator=1, UserProperty=[("a", "1"), ("b", "2")], MessageExpiryInterval=300)
    pub.publish("rr/req", b"ping", qos=1, props=p)
    m = sub.expect(1)[0]
    q = m.properties
    assert (q.ResponseTopic, q.CorrelationData, q.ContentType, q.PayloadFormatIndicator) == (
        "rr/resp", b"\x00\x01id", "text/plain", 1)
    assert q.UserProperty == [("a", "1"), ("b", "2")]
    assert 0 < q.MessageExpiryInterval <= 300


def test_expired_messages_are_not_delivered_to_offline_sessions(mqtt_cloud):
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=300)
    s = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="exp-sub", connect_props=cp)
    s.subscribe("ex/#", qos=1)
    s.close()
    pub = Mqtt(mqtt_cloud.mqtt_port, 5)
    pub.publish("ex/a", b"short", qos=1, props=props(MessageExpiryInterval=1))
    pub.publish("ex/a", b"long", qos=1, props=props(MessageExpiryInterval=3600))
    # Let the first one expire: the broker compares against the record timestamp.
    from helpers import wait_for
    import time
    t0 = time.time()
    wait_for(lambda: time.time() - t0 > 1.1, 5, what="1.1 s to pass")
    s = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="exp-sub", clean=False, connect_props=cp)
    m = s.expect(1)[0]
    assert m.payload == b"long"
    s.expect_none(pub, "ex/probe")


def test_subscription_options_and_identifiers(mqtt_cloud):
    c = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="self")
    c.subscribe([("opt/nolocal", SubscribeOptions(qos=1, noLocal=True))])
    c.subscribe([("opt/rap", SubscribeOptions(qos=1, retainAsPublished=True))],
                properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42))
    other = Mqtt(mqtt_cloud.mqtt_port, 5)
    c.publish("opt/nolocal", b"mine", qos=1)
    other.publish("opt/nolocal", b"theirs", qos=1)
    m = c.expect(1)[0]
    assert m.payload == b"theirs", "no-local drops the client's own publish"
    other.publish("opt/rap", b"kept", qos=1, retain=True)
    m = c.expect(1)[0]
    assert (m.payload, m.retain) == (b"kept", True)
    assert m.properties.SubscriptionIdentifier == [42]


def test_retain_handling(mqtt_cloud):
    pub = Mqtt(mqtt_cloud.mqtt_port, 5)
    pub.publish("rh/x", b"R", qos=1, retain=True)
    never = Mqtt(mqtt_cloud.mqtt_port, 5)
    never.subscribe([("rh/#", SubscribeOptions(qos=1, retainHandling=2))])
    once = Mqtt(mqtt_cloud.mqtt_port, 5)
    once.subscribe([("rh/#", SubscribeOptions(qos=1, retainHandling=1))])
    assert once.expect(1)[0].payload == b"R"
    once.subscribe([("rh/#", SubscribeOptions(qos=1, retainHandling=1))])  # not new: nothing
    always = Mqtt(mqtt_cloud.mqtt_port, 5)
    always.subscribe([("rh/#", SubscribeOptions(qos=1, retainHandling=0))])
    assert always.expect(1)[0].payload == b"R"
    for s in (never, once):
        s.expect_none(pub, "rh/probe")


def test_topic_alias_from_the_client(mqtt_cloud):
    sub = Mqtt(mqtt_cloud.mqtt_port, 5)
    sub.subscribe("alias/#", qos=1)
    pub = Mqtt(mqtt_cloud.mqtt_port, 5)
    pub.publish("alias/long/name", b"1", qos=1, props=props(TopicAlias=1))
    pub.publish("", b"2", qos=1, props=props(TopicAlias=1))
    got = sub.expect(2)
    assert [(m.topic, m.payload) for m in got] == [("alias/long/name", b"1"), ("alias/long/name", b"2")]


def test_reason_codes_for_shared_subscriptions(mqtt_cloud):
    """Shared subscriptions are granted (delivery: test_mqtt_features); bad share names,
    which paho refuses to send, are covered by session_tests::subscribe_and_unsubscribe."""
    c = Mqtt(mqtt_cloud.mqtt_port, 5)
    codes = c.subscribe([("ok/+", 1), ("$share/g/t", 2)])
    assert [x.value for x in codes] == [1, 2]


def test_client_maximum_packet_size_is_respected(mqtt_cloud):
    small = Mqtt(mqtt_cloud.mqtt_port, 5, connect_props=props(PacketTypes.CONNECT, MaximumPacketSize=64))
    small.subscribe("mps", qos=1)
    pub = Mqtt(mqtt_cloud.mqtt_port, 5)
    pub.publish("mps", b"x" * 200, qos=1)
    pub.publish("mps", b"small", qos=1)
    assert small.expect(1)[0].payload == b"small"


def test_topic_alias_to_the_client(mqtt_cloud):
    """The server assigns aliases up to the client's Topic Alias Maximum (paho 2.2 does
    not resolve incoming aliases, so the test does, as a client must)."""
    sub = Mqtt(mqtt_cloud.mqtt_port, 5, connect_props=props(PacketTypes.CONNECT, TopicAliasMaximum=2))
    sub.subscribe("ta/#", qos=1)
    pub = Mqtt(mqtt_cloud.mqtt_port, 4)
    sent = [("ta/one", b"1"), ("ta/one", b"2"), ("ta/two", b"3"), ("ta/three", b"4"), ("ta/one", b"5"),
            ("ta/two", b"6")]
    for t, p in sent:
        pub.publish(t, p, qos=1)
    aliases: dict[int, str] = {}
    got = []
    for m in sub.expect(len(sent)):
        alias = getattr(m.properties, "TopicAlias", None) if m.properties else None
        topic = m.topic
        if alias is not None:
            if topic:
                aliases[alias] = topic
            else:
                topic = aliases[alias]
        got.append((topic, m.payload))
    assert sorted(got) == sorted(sent)
    assert set(aliases.values()) == {"ta/one", "ta/two"}, "two aliases, then names"
