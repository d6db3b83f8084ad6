"""MQTT view, priority 2: retained messages and persistent sessions across restarts,
will messages, keep alive, session takeover, QoS 2 end to end."""

from __future__ import annotations

import struct
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_fixtures import Mqtt, mqtt_cloud, props, raw, read_until_closed, restart  # noqa: F401


def test_retained_messages_survive_a_restart(mqtt_cloud):
    pub = Mqtt(mqtt_cloud.mqtt_port, 4)
    pub.publish("r/a", b"A", qos=1, retain=True)
    pub.publish("r/b", b"B", qos=1, retain=True)
    pub.publish("r/b", b"B2", qos=1, retain=True)
    pub.publish("r/c", b"C", qos=1, retain=True)
    pub.publish("r/c", b"", qos=1, retain=True)  # clears r/c
    pub.close()
    restart(mqtt_cloud)
    sub = Mqtt(mqtt_cloud.mqtt_port, 5)
    sub.subscribe("r/#", qos=1)
    got = sorted((m.topic, m.payload, m.retain) for m in sub.expect(2))
    assert got == [("r/a", b"A", True), ("r/b", b"B2", True)]
    # A live publish with retain is forwarded without the flag (no retain-as-published).
    pub = Mqtt(mqtt_cloud.mqtt_port, 4)
    pub.publish("r/a", b"A2", qos=1, retain=True)
    m = sub.expect(1)[0]
    assert (m.payload, m.retain) == (b"A2", False)
    sub.expect_none(pub, "r/z")


def test_persistent_session_resumes_from_its_log_position(mqtt_cloud):
    """3.1.1 clean_session=false: messages published while offline arrive on reconnect,
    also after the cloud was killed and restarted in between."""
    s = Mqtt(mqtt_cloud.mqtt_port, 4, client_id="durable-1", clean=False)
    s.subscribe("p/#", qos=1)
    s.close()
    pub = Mqtt(mqtt_cloud.mqtt_port, 4)
    for i in range(3):
        pub.publish(f"p/{i}", f"m{i}".encode(), qos=1)
    pub.close()
    s = Mqtt(mqtt_cloud.mqtt_port, 4, client_id="durable-1", clean=False)
    assert s.connack[0].session_present
    # Order is per topic (one log each); these are three topics.
    assert sorted(m.payload for m in s.expect(3)) == [b"m0", b"m1", b"m2"]
    s.close()
    # Offline again; publish, kill the cloud, restart, reconnect.
    pub = Mqtt(mqtt_cloud.mqtt_port, 4)
    pub.publish("p/0", b"m3", qos=1)
    pub.publish("p/new-topic", b"m4", qos=1)  # a topic created while the session was offline
    pub.close()
    restart(mqtt_cloud)
    s = Mqtt(mqtt_cloud.mqtt_port, 4, client_id="durable-1", clean=False)
    assert s.connack[0].session_present
    assert sorted(m.payload for m in s.expect(2)) == [b"m3", b"m4"]
    probe = Mqtt(mqtt_cloud.mqtt_port, 4)
    s.expect_none(probe, "p/probe")
    s.close()
    # A clean session discards it.
    s = Mqtt(mqtt_cloud.mqtt_port, 4, client_id="durable-1", clean=True)
    assert not s.connack[0].session_present


def test_mqtt5_session_expiry(mqtt_cloud):
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=1)
    s = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="expiring", clean=True, connect_props=cp)
    s.subscribe("e/x", qos=1)
    s.close()
    s = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="expiring", clean=False, connect_props=cp)
    assert s.connack[0].session_present
    s.close()
    # Expiry is a server-side timer: wait for the broker to report it (reconnecting to
    # check would resume the session and restart the timer).
    from helpers import wait_for
    wait_for(lambda: "session expired" in mqtt_cloud.stderr_text(), 10, what="session expiry after 1 s")
    c = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="expiring", clean=False, connect_props=cp)
    assert not c.connack[0].session_present


def test_will_message_on_abrupt_disconnect(mqtt_cloud):
    sub = Mqtt(mqtt_cloud.mqtt_port, 4)
    sub.subscribe("wills/#", qos=1)
    dying = Mqtt(mqtt_cloud.mqtt_port, 4, will=("wills/d1", b"gone", 1, False))
    graceful = Mqtt(mqtt_cloud.mqtt_port, 5, will=("wills/d2", b"never", 1, False))
    graceful.close()
    dying.drop()
    m = sub.expect(1)[0]
    assert (m.topic, m.payload) == ("wills/d1", b"gone")
    probe = Mqtt(mqtt_cloud.mqtt_port, 4)
    sub.expect_none(probe, "wills/probe")


def test_will_delay_is_cancelled_by_a_reconnect(mqtt_cloud):
    sub = Mqtt(mqtt_cloud.mqtt_port, 5)
    sub.subscribe("wd/#", qos=1)
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=60)
    wp = props(PacketTypes.WILLMESSAGE, WillDelayInterval=1)
    b = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="wd-b", connect_props=cp, will=("wd/b", b"b-died", 1, False, wp))
    b.drop()
    Mqtt(mqtt_cloud.mqtt_port, 5, client_id="wd-b", clean=False, connect_props=cp)  # back within the delay
    # wd-a drops after wd-b with the same delay, so its will is due after wd-b's would
    # have been: receiving wd-a's will first proves wd-b's was cancelled (no sleep).
    a = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="wd-a", connect_props=cp, will=("wd/a", b"a-died", 1, False, wp))
    a.drop()
    m = sub.expect(1, timeout=10)[0]
    assert (m.topic, m.payload) == ("wd/a", b"a-died")
    probe = Mqtt(mqtt_cloud.mqtt_port, 4)
    sub.expect_none(probe, "wd/probe")


def test_keep_alive_closes_a_silent_client(mqtt_cloud):
    s = raw(mqtt_cloud.mqtt_port)
    client_id = b"silent"
    body = b"\x00\x04MQTT\x04\x02" + struct.pack(">H", 1) + struct.pack(">H", len(client_id)) + client_id
    s.sendall(bytes([0x10, len(body)]) + body)
    t0 = time.monotonic()
    data = read_until_closed(s, timeout=10)
    took = time.monotonic() - t0
    assert data[:4] == b"\x20\x02\x00\x00", data
    assert 1.0 <= took < 5, f"closed after {took:.2f}s; keep alive 1 s allows 1.5 s"


def test_session_takeover(mqtt_cloud):
    first = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="twin")
    Mqtt(mqtt_cloud.mqtt_port, 5, client_id="twin")
    assert first.disconnected.wait(10)
    assert first.disconnect_reason.value == 0x8E, first.disconnect_reason


def test_qos2_end_to_end_with_v4_and_v5(mqtt_cloud):
    sub4 = Mqtt(mqtt_cloud.mqtt_port, 4)
    sub4.subscribe("q2", qos=2)
    sub5 = Mqtt(mqtt_cloud.mqtt_port, 5)
    sub5.subscribe("q2", qos=2)
    pub = Mqtt(mqtt_cloud.mqtt_port, 5)
    for i in range(20):
        pub.publish("q2", str(i).encode(), qos=2)
    for s in (sub4, sub5):
        got = s.expect(20)
        assert [int(m.payload) for m in got] == list(range(20))
        assert all(m.qos == 2 for m in got)
