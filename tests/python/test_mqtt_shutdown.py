"""MQTT view: a clean stop (SIGTERM) of the cloud. Every connection stores its persistent
session as a disconnect does (the oldest unacknowledged delivery per cursor), MQTT 5 clients
get DISCONNECT 0x8B (Server shutting down), wills due now are published (delayed ones stay
stored: test_mqtt_will_persist.py), and a client that stopped reading cannot hold the stop
up."""

from __future__ import annotations

import signal
import socket
import struct
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from helpers import wait_for
from mqtt_fixtures import Mqtt, mqtt_cloud, mqtt_port, props, raw, start_mqtt_cloud, varint  # noqa: F401

SERVER_SHUTTING_DOWN = 0x8B


def clean_stop(cloud) -> float:
    """SIGTERM; returns how long the process took to exit. Fails if the harness had to
    kill it or it exited with an error."""
    t0 = time.monotonic()
    cloud.stop(timeout=15)
    took = time.monotonic() - t0
    assert cloud.proc.returncode == 0, f"cloud exited {cloud.proc.returncode}\n{cloud.stderr_tail()}"
    return took


def start_again(cloud):
    cloud.start()
    cloud.mqtt_port = mqtt_port(cloud)
    return cloud


def session_props():
    return props(PacketTypes.CONNECT, SessionExpiryInterval=3600)


# ---- raw MQTT 5 helpers ---------------------------------------------------------------

def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def mqtt_str(s: bytes) -> bytes:
    return struct.pack(">H", len(s)) + s


def connect_v5(client_id: bytes, clean: bool, expiry: int = 3600) -> bytes:
    flags = 0x02 if clean else 0x00
    properties = b"\x11" + struct.pack(">I", expiry)
    body = mqtt_str(b"MQTT") + bytes([5, flags]) + struct.pack(">H", 60) + varint(len(properties)) + properties
    return packet(0x10, body + mqtt_str(client_id))


def connect_v4(client_id: bytes) -> bytes:
    return packet(0x10, mqtt_str(b"MQTT") + bytes([4, 0x02]) + struct.pack(">H", 60) + mqtt_str(client_id))


class Reader:
    """Reads MQTT packets from a raw socket: (first byte, body)."""

    def __init__(self, s: socket.socket):
        self.s = s
        self.buf = b""

    def _fill(self) -> bool:
        try:
            chunk = self.s.recv(65536)
        except ConnectionResetError:
            return False
        self.buf += chunk
        return bool(chunk)

    def next(self, timeout: float = 10):
        """The next packet, or None once the server closed the connection."""
        self.s.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                n, mult, i = 0, 1, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    n += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        break
                else:
                    i = None
                if i is not None and len(self.buf) >= i + n:
                    p = (self.buf[0], self.buf[i:i + n])
                    self.buf = self.buf[i + n:]
                    return p
            if not self._fill():
                return None


def v5_publish(body: bytes):
    """(topic, packet id, payload) of an MQTT 5 QoS 1/2 PUBLISH body."""
    n = struct.unpack(">H", body[:2])[0]
    topic = body[2:2 + n]
    pkid = struct.unpack(">H", body[2 + n:4 + n])[0]
    plen, i, mult = 0, 4 + n, 1
    while True:
        b = body[i]
        plen += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            break
    return topic, pkid, body[i + plen:]


def raw_session(port: int, client_id: bytes, clean: bool):
    s = raw(port)
    s.sendall(connect_v5(client_id, clean))
    r = Reader(s)
    kind, body = r.next()
    assert kind == 0x20 and body[1] == 0, (kind, body)
    return s, r, bool(body[0] & 1)


def ping(s: socket.socket, r: Reader):
    """PINGREQ/PINGRESP: everything sent before it has been handled (in order)."""
    s.sendall(b"\xc0\x00")
    kind, _ = r.next()
    assert kind == 0xD0, hex(kind)


# ---- tests ----------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
def test_acknowledged_messages_are_not_redelivered_after_a_clean_stop(cloud_factory, version):
    """Fails if the stop drops connections without storing their positions: the resumed
    session would get the N acknowledged messages again before the M new ones."""
    cloud = start_mqtt_cloud(cloud_factory)
    client_id = f"stop-v{version}"
    kw = {"connect_props": session_props()} if version == 5 else {}
    s = Mqtt(cloud.mqtt_port, version, client_id=client_id, clean=False, **kw)
    s.subscribe("gs/t", qos=1)
    pub = Mqtt(cloud.mqtt_port, 4)
    before = [f"n{i}".encode() for i in range(5)]
    for p in before:
        pub.publish("gs/t", p, qos=1)
    assert [m.payload for m in s.expect(len(before))] == before
    # paho acknowledges each message when its callback returns; its PUBACKs precede this
    # publish on the wire, and the cloud handles a connection's packets in order.
    s.publish("gs/elsewhere", b"barrier", qos=1)
    pub.close()
    clean_stop(cloud)
    assert s.disconnected.wait(10), "the client did not see the connection end"
    s.c.loop_stop()
    if version == 5:
        assert s.disconnect_reason.value == SERVER_SHUTTING_DOWN, s.disconnect_reason
    start_again(cloud)
    s = Mqtt(cloud.mqtt_port, version, client_id=client_id, clean=False, **kw)
    assert s.connack[0].session_present
    pub = Mqtt(cloud.mqtt_port, 4)
    after = [f"m{i}".encode() for i in range(3)]
    for p in after:
        pub.publish("gs/t", p, qos=1)
    assert [m.payload for m in s.expect(len(after))] == after
    s.expect_none(pub, "gs/t")


def test_mqtt5_client_gets_server_shutting_down(mqtt_cloud):
    s, r, _ = raw_session(mqtt_cloud.mqtt_port, b"stop-raw", clean=True)
    clean_stop(mqtt_cloud)
    got = []
    while (p := r.next()) is not None:
        got.append(p)
    # One DISCONNECT (its reason code only: MQTT 5 3.14.2.2.1 lets an empty property
    # list be left out), then the close.
    assert got == [(0xE0, bytes([SERVER_SHUTTING_DOWN]))], got


def test_unacknowledged_deliveries_come_again_with_dup_after_a_clean_stop(cloud_factory):
    """Three QoS 1 deliveries, only the first acknowledged, then a clean stop: after the
    restart the other two come again, with DUP set, then new messages without it."""
    cloud = start_mqtt_cloud(cloud_factory)
    s, r, _ = raw_session(cloud.mqtt_port, b"inflight", clean=True)
    s.sendall(packet(0x82, struct.pack(">H", 1) + b"\x00" + mqtt_str(b"if/t") + b"\x01"))
    kind, _ = r.next()
    assert kind == 0x90, hex(kind)
    pub = Mqtt(cloud.mqtt_port, 4)
    for i in range(3):
        pub.publish("if/t", f"q{i}".encode(), qos=1)
    pub.close()
    got = []
    for _ in range(3):
        kind, body = r.next()
        assert kind & 0xF0 == 0x30 and kind & 0x06 == 0x02, hex(kind)
        got.append(v5_publish(body))
    assert [p for _, _, p in got] == [b"q0", b"q1", b"q2"]
    s.sendall(packet(0x40, struct.pack(">H", got[0][1])))  # PUBACK for q0 only
    ping(s, r)
    clean_stop(cloud)
    rest = []
    while (p := r.next()) is not None:
        rest.append(p)
    assert rest and rest[-1][0] == 0xE0 and rest[-1][1][0] == SERVER_SHUTTING_DOWN, rest
    s.close()

    start_again(cloud)
    s, r, present = raw_session(cloud.mqtt_port, b"inflight", clean=False)
    assert present, "session not resumed"
    again = []
    for _ in range(2):
        kind, body = r.next()
        topic, pkid, payload = v5_publish(body)
        again.append((payload, bool(kind & 0x08)))
        s.sendall(packet(0x40, struct.pack(">H", pkid)))
    assert again == [(b"q1", True), (b"q2", True)], again
    pub = Mqtt(cloud.mqtt_port, 4)
    pub.publish("if/t", b"q3", qos=1)
    kind, body = r.next()
    assert (v5_publish(body)[2], bool(kind & 0x08)) == (b"q3", False)


def test_will_due_now_is_published_at_a_clean_stop_but_not_a_delayed_one(cloud_factory):
    """A server stop is not the client's DISCONNECT: a will without a delay (3.1.1, or
    MQTT 5 with delay 0) is published before the cloud exits; a will whose delay the
    session outlives is not published at the stop nor right after the restart (it is
    stored and due 30 s after the stop: see test_mqtt_will_persist.py)."""
    cloud = start_mqtt_cloud(cloud_factory)
    port = cloud.mqtt_port
    # An offline persistent session subscribed to the will topics reads them after the
    # restart (topics created after its subscription are read from their start).
    watcher = Mqtt(port, 4, client_id="will-watcher", clean=False)
    watcher.subscribe("wills/#", qos=1)
    watcher.close()
    v4 = Mqtt(port, 4, will=("wills/v4", b"v4-gone", 1, False))
    v5 = Mqtt(port, 5, will=("wills/v5", b"v5-gone", 1, False))
    wp = props(PacketTypes.WILLMESSAGE, WillDelayInterval=30)
    delayed = Mqtt(port, 5, client_id="delayed", connect_props=session_props(),
                   will=("wills/delayed", b"too-early", 1, False, wp))
    clean_stop(cloud)
    for c in (v4, v5, delayed):
        c.c.loop_stop()
    start_again(cloud)
    watcher = Mqtt(cloud.mqtt_port, 4, client_id="will-watcher", clean=False)
    assert watcher.connack[0].session_present
    got = sorted((m.topic, m.payload) for m in watcher.expect(2))
    assert got == [("wills/v4", b"v4-gone"), ("wills/v5", b"v5-gone")], got
    watcher.expect_none(Mqtt(cloud.mqtt_port, 4), "wills/zz-probe")


def test_stop_is_bounded_with_a_client_that_stopped_reading(cloud_factory):
    """A subscriber that never reads, flooded until the cloud's writes to it block: the
    stop still ends within about a second (the write is interrupted, its session stored),
    not after the stop's 3 s wait for connections, and nothing is reported stuck."""
    cloud = start_mqtt_cloud(cloud_factory)
    port = cloud.mqtt_port
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", port))
    stuck.sendall(connect_v4(b"never-reads"))
    r = Reader(stuck)
    kind, _ = r.next()
    assert kind == 0x20
    stuck.sendall(packet(0x82, struct.pack(">H", 1) + mqtt_str(b"flood/t") + b"\x00"))
    kind, _ = r.next()
    assert kind == 0x90
    # From here on the client reads nothing.
    flood = raw(port)
    flood.sendall(connect_v4(b"flooder"))
    fr = Reader(flood)
    assert fr.next()[0] == 0x20
    payload = b"x" * (256 << 10)
    one = packet(0x30, mqtt_str(b"flood/t") + payload)
    flood.sendall(one * 80)  # 20 MiB, far beyond what the socket buffers hold
    ping(flood, fr)  # all appended: the subscriber's connection is writing
    t0 = time.monotonic()
    cloud.proc.send_signal(signal.SIGTERM)

    def refused_while_alive():
        # The listener closes first: no new session starts while the stop waits for
        # the connections (the one that does not read holds it for about a second).
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return None
        except ConnectionResetError:
            return None  # queued as the listener closed: try again
        except ConnectionRefusedError:
            return "alive" if cloud.proc.poll() is None else "exited"

    assert wait_for(refused_while_alive, 5, what="the mqtt listener closed") == "alive"
    clean_stop(cloud)
    took = time.monotonic() - t0
    assert took < 2.5, f"stop took {took:.1f} s"
    assert "did not finish" not in cloud.stderr_text()
    stuck.close()
    flood.close()
