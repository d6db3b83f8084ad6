"""MQTT view, priority 1: CONNECT/CONNACK in 3.1.1 and 5, publish QoS 0/1/2 in,
subscribe with wildcards, delivery QoS 0/1/2 out, with paho-mqtt and mosquitto_pub/sub."""

from __future__ import annotations

import pytest

from mqtt_fixtures import Mqtt, mosquitto_pub, mosquitto_sub, mqtt_cloud, sub_payloads  # noqa: F401


@pytest.mark.parametrize("version", [4, 5])
def test_connect_publish_subscribe_wildcards(mqtt_cloud, version):
    sub = Mqtt(mqtt_cloud.mqtt_port, version)
    flags, rc, _ = sub.connack
    assert not flags.session_present
    codes = sub.subscribe([("factory/+/cam7", 1), ("factory/#", 0), ("other/x", 2)])
    assert [c.value for c in codes] == [1, 0, 2]
    pub = Mqtt(mqtt_cloud.mqtt_port, version)
    pub.publish("factory/line1/cam7", b"q1", qos=1)
    pub.publish("factory/line2/temp", b"q0", qos=0)
    pub.publish("unrelated", b"no", qos=1)
    pub.publish("other/x", b"q2", qos=2)
    got = sub.expect(3)
    by_topic = {m.topic: m for m in got}
    # Overlapping subscriptions deliver once, with the highest granted QoS (MQTT 5 3.3.4).
    assert by_topic["factory/line1/cam7"].payload == b"q1"
    assert by_topic["factory/line1/cam7"].qos == 1
    assert by_topic["factory/line2/temp"].qos == 0
    assert by_topic["other/x"].qos == 2 and by_topic["other/x"].payload == b"q2"
    sub.expect_none(pub, "other/x")
    sub.close()
    pub.close()


def test_delivery_qos_is_min_of_publish_and_subscription(mqtt_cloud):
    sub = Mqtt(mqtt_cloud.mqtt_port, 5)
    sub.subscribe("t/q", qos=1)
    pub = Mqtt(mqtt_cloud.mqtt_port, 4)
    for q in (0, 1, 2):
        pub.publish("t/q", f"{q}".encode(), qos=q)
    got = sub.expect(3)
    assert [(m.payload, m.qos) for m in got] == [(b"0", 0), (b"1", 1), (b"2", 1)]


def test_mosquitto_clients_both_versions(mqtt_cloud):
    port = mqtt_cloud.mqtt_port
    s4 = mosquitto_sub(port, "sensors/#", 3, ["-q", "1", "-V", "mqttv311"])
    s5 = mosquitto_sub(port, "sensors/+/t", 2, ["-q", "2", "-V", "mqttv5"])
    mosquitto_pub(port, "sensors/a/t", "one", ["-q", "1"])
    mosquitto_pub(port, "sensors/b/t", "two", ["-q", "2", "-V", "mqttv5"])
    mosquitto_pub(port, "sensors/b/h", "three", ["-q", "0"])
    assert sub_payloads(s4) == ["one", "two", "three"]
    assert sub_payloads(s5) == ["one", "two"]


def test_unsubscribe_stops_delivery(mqtt_cloud):
    sub = Mqtt(mqtt_cloud.mqtt_port, 4)
    sub.subscribe([("u/a", 1), ("u/b", 1)])
    pub = Mqtt(mqtt_cloud.mqtt_port, 4)
    pub.publish("u/a", b"1", qos=1)
    assert sub.expect(1)[0].payload == b"1"
    sub.unsubscribe("u/a")
    pub.publish("u/a", b"2", qos=1)
    sub.expect_none(pub, "u/b")


def test_dollar_topics_are_not_matched_by_leading_wildcards(mqtt_cloud):
    sub = Mqtt(mqtt_cloud.mqtt_port, 5)
    sub.subscribe([("#", 0), ("+/uptime", 0)])
    sys_sub = Mqtt(mqtt_cloud.mqtt_port, 5)
    sys_sub.subscribe("$SYS/#", 0)
    pub = Mqtt(mqtt_cloud.mqtt_port, 5)
    pub.publish("$SYS/uptime", b"s", qos=1)
    assert sys_sub.expect(1)[0].topic == "$SYS/uptime"
    pub.publish("plain/uptime", b"p", qos=1)
    m = sub.expect(1)[0]
    assert m.topic == "plain/uptime", f"{m.topic} reached a '#' subscriber"


def test_many_messages_in_order_with_flow_control(mqtt_cloud):
    """More QoS 1 messages than the client's receive maximum: all arrive, in order."""
    from mqtt_fixtures import props
    from paho.mqtt.packettypes import PacketTypes
    sub = Mqtt(mqtt_cloud.mqtt_port, 5, connect_props=props(PacketTypes.CONNECT, ReceiveMaximum=5))
    sub.subscribe("flow", qos=1)
    pub = Mqtt(mqtt_cloud.mqtt_port, 4)
    n = 500
    for i in range(n):
        pub.c.publish("flow", str(i).encode(), qos=1)
    got = sub.expect(n, timeout=30)
    assert [int(m.payload) for m in got] == list(range(n))
