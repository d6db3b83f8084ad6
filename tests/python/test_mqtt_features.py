"""MQTT view: shared subscriptions, authentication, retained messages set over Kafka,
and session expiry counted from the real disconnect across a restart."""

from __future__ import annotations

import queue
import subprocess
import threading
import time

import paho.mqtt.client as paho
import pytest

from helpers import ck_produce, kcat_produce, wait_for
from mqtt_fixtures import Mqtt, mqtt_cloud, mqtt_port, props, raw, restart  # noqa: F401
from paho.mqtt.packettypes import PacketTypes


def collect(members: list, n: int, timeout: float = 15) -> list[list[bytes]]:
    """Payloads per member until `n` arrived in total."""
    got: list[list[bytes]] = [[] for _ in members]
    deadline = time.monotonic() + timeout
    while sum(map(len, got)) < n:
        assert time.monotonic() < deadline, f"received {sum(map(len, got))} of {n}: {got}"
        for i, m in enumerate(members):
            try:
                got[i].append(m.messages.get(timeout=0.05).payload)
            except queue.Empty:
                pass
    return got


def test_shared_subscription_splits_messages_v5(mqtt_cloud):
    port = mqtt_cloud.mqtt_port
    members = [Mqtt(port, 5) for _ in range(3)]
    for m in members:
        assert m.subscribe("$share/g1/sh/t", qos=1)[0].value == 1
    plain = Mqtt(port, 5)
    plain.subscribe("sh/t", qos=1)
    pub = Mqtt(port, 5)
    sent = [f"m{i}".encode() for i in range(30)]
    for p in sent:
        pub.publish("sh/t", p, qos=1)
    got = collect(members, len(sent))
    flat = [p for g in got for p in g]
    assert sorted(flat) == sorted(sent), "each message exactly once across the group"
    assert all(g for g in got), f"round robin reaches every member: {[len(g) for g in got]}"
    # A non-shared subscription on the same filter still gets everything, in order.
    assert [m.payload for m in plain.expect(len(sent))] == sent
    assert members[0].connack[2].SharedSubscriptionAvailable == 1


def test_shared_subscription_from_mosquitto_sub_v311(mqtt_cloud):
    port = mqtt_cloud.mqtt_port
    procs = []
    lines: list[queue.Queue] = []
    try:
        for i in range(2):
            p = subprocess.Popen(
                ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv311", "-q", "1",
                 "-t", "$share/g2/ms/#", "-d", "-i", f"ms-member-{i}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            q: queue.Queue = queue.Queue()
            threading.Thread(target=lambda p=p, q=q: [q.put(x.rstrip("\n")) for x in p.stdout],
                             daemon=True).start()
            procs.append(p)
            lines.append(q)
        seen: list[list[str]] = [[], []]

        def drain():
            for i, q in enumerate(lines):
                while not q.empty():
                    seen[i].append(q.get())

        def subscribed():
            drain()
            return all(any("SUBACK" in x for x in s) for s in seen)

        wait_for(subscribed, 15, what="mosquitto_sub SUBACKs")
        pub = Mqtt(port, 4)
        sent = [f"x{i}" for i in range(20)]
        for p in sent:
            pub.publish("ms/a", p.encode(), qos=1)

        def payloads():
            drain()
            return [[x for x in s if x.startswith("x")] for s in seen]

        wait_for(lambda: sum(map(len, payloads())) >= len(sent), 15, what="20 messages")
        got = payloads()
        assert sorted(got[0] + got[1]) == sorted(sent)
        assert got[0] and got[1], f"both members served: {[len(g) for g in got]}"
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _raw_v311_subscriber(port: int, topic: str, client_id: str):
    """A 3.1.1 client that subscribes with QoS 1 and never acknowledges anything."""
    s = raw(port)
    cid = client_id.encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    s.sendall(bytes([0x10, len(var)]) + var)
    assert s.recv(4) == b"\x20\x02\x00\x00"
    t = topic.encode()
    body = b"\x00\x01" + len(t).to_bytes(2, "big") + t + b"\x01"
    s.sendall(bytes([0x82, len(body)]) + body)
    assert s.recv(5) == b"\x90\x03\x00\x01\x01"
    return s


def test_shared_member_dying_with_unacked_messages_hands_them_to_another(mqtt_cloud):
    port = mqtt_cloud.mqtt_port
    silent = _raw_v311_subscriber(port, "$share/g3/die/t", "silent-member")
    good = Mqtt(port, 5)
    good.subscribe("$share/g3/die/t", qos=1)
    pub = Mqtt(port, 4)
    sent = [f"d{i}".encode() for i in range(10)]
    for p in sent:
        pub.publish("die/t", p, qos=1)
    # The silent member got its share (round robin) and acknowledged none of it.
    silent.settimeout(10)
    data = b""
    while sent[0] not in data and sent[1] not in data:
        chunk = silent.recv(65536)
        assert chunk, "silent member closed"
        data += chunk
    silent.close()
    got = [m.payload for m in good.expect(len(sent))]
    assert sorted(got) == sorted(sent), "the survivor gets every message, the dead member's too"


@pytest.mark.cloud_config({"mqtt": {"credentials": {"alice": "s3cret"}}})
def test_authentication_refuses_bad_credentials(mqtt_cloud):
    port = mqtt_cloud.mqtt_port
    # paho reports 3.1.1 return code 4 as reason 134 as well (5, not authorized, as 135).
    for version, bad_rc in ((5, 134), (4, 134)):
        for user, password in (("alice", "wrong"), ("mallory", "s3cret"), (None, None)):
            proto = paho.MQTTv5 if version == 5 else paho.MQTTv311
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=proto, client_id=f"a-{version}")
            if user:
                c.username_pw_set(user, password)
            result = {}
            done = threading.Event()
            c.on_connect = lambda c, u, f, rc, p=None: (result.update(rc=rc), done.set())
            c.on_disconnect = lambda *a: done.set()
            c.connect("127.0.0.1", port)
            c.loop_start()
            try:
                assert done.wait(10), "no CONNACK"
                assert result["rc"].value == bad_rc, (version, user, result)
                wait_for(lambda: not c.is_connected(), 10, what="connection closed")
            finally:
                c.loop_stop()
    ok = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id="a-ok")
    ok.username_pw_set("alice", "s3cret")
    assert ok.connect("127.0.0.1", port) == 0
    ok.loop_start()
    wait_for(ok.is_connected, 10, what="connected with good credentials")
    ok.loop_stop()
    base = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "auth/t", "-m", "x", "-q", "1"]
    bad = subprocess.run(base + ["-u", "alice", "-P", "nope"], capture_output=True, text=True, timeout=20)
    assert bad.returncode != 0 and "password" in (bad.stdout + bad.stderr).lower(), bad
    good = subprocess.run(base + ["-u", "alice", "-P", "s3cret"], capture_output=True, text=True, timeout=20)
    assert good.returncode == 0, good


def test_kafka_records_with_retain_header_set_the_retained_message(mqtt_cloud):
    bs = mqtt_cloud.bootstrap
    kcat_produce(bs, "kret.a", ["A1", "A2"], headers=["mqtt.topic=kret/a", "mqtt.retain=true"])
    kcat_produce(bs, "kret.b", ["B"], headers=["mqtt.topic=kret/b", "mqtt.retain=1"])
    kcat_produce(bs, "kret.c", ["C"], headers=["mqtt.topic=kret/c", "mqtt.retain=true"])
    # An empty value clears it (kcat skips empty lines; confluent-kafka, lz4-compressed).
    ck_produce(bs, "kret.c", [{"value": b"", "headers": [("mqtt.topic", b"kret/c"),
                                                         ("mqtt.retain", b"true")]}], codec="lz4")
    kcat_produce(bs, "kret.d", ["D"], headers=["mqtt.topic=kret/d"])  # not retained
    # zstd, as the edge sends: the check decompresses the batch.
    ck_produce(bs, "kret.e", [{"value": b"E", "headers": [("mqtt.topic", b"kret/e"),
                                                          ("mqtt.retain", b"true")]}], codec="zstd")
    expected = [("kret/a", b"A2", True), ("kret/b", b"B", True), ("kret/e", b"E", True)]

    def check():
        sub = Mqtt(mqtt_cloud.mqtt_port, 5)
        sub.subscribe("kret/#", qos=1)
        got = sorted((m.topic, m.payload, m.retain) for m in sub.expect(3))
        assert got == expected
        pub = Mqtt(mqtt_cloud.mqtt_port, 4)
        sub.expect_none(pub, "kret/zz")

    check()
    restart(mqtt_cloud)
    check()


def test_session_expiry_counts_from_the_disconnect_across_a_restart(mqtt_cloud):
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=2)
    s = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="exp-restart", clean=False, connect_props=cp)
    s.subscribe("exp/#", qos=1)
    s.close()
    mqtt_cloud.stop()
    # The property under test is elapsed time: the session must be older than its
    # expiry interval while the cloud is down.
    time.sleep(2.5)
    mqtt_cloud.start()
    mqtt_cloud.mqtt_port = mqtt_port(mqtt_cloud)
    s = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="exp-restart", clean=False, connect_props=cp)
    assert not s.connack[0].session_present
    s.close()


def test_unexpired_session_survives_a_restart(mqtt_cloud):
    """Control for the test above: the same steps within the interval keep the session."""
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=60)
    s = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="exp-keep", clean=False, connect_props=cp)
    s.subscribe("exp/#", qos=1)
    s.close()
    restart(mqtt_cloud)
    s = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="exp-keep", clean=False, connect_props=cp)
    assert s.connack[0].session_present
    s.close()
