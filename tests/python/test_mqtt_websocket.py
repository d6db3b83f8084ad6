"""MQTT over WebSocket (`mqtt.websocket`): paho's websocket transport, 3.1.1 and 5, plain
and TLS (wss), sharing topics with MQTT over TCP and with Kafka; bad input on the
WebSocket port closes that connection only."""

from __future__ import annotations

import base64
import os
import socket

import pytest

from helpers import ck_produce, ck_read_all, make_certs
from mqtt_fixtures import (Mqtt, mqtt_port, props, raise_file_limit, read_until_closed, start_error,
                           start_mqtt_cloud)

WS = {"mqtt": {"websocket": {"listen": "127.0.0.1:0"}}}


def ws_cloud(cloud_factory):
    c = start_mqtt_cloud(cloud_factory, WS)
    c.ws_port = mqtt_port(c, "mqtt-ws")
    return c


def test_websocket_clients_share_topics_with_tcp_and_kafka(cloud_factory):
    c = ws_cloud(cloud_factory)
    v5 = Mqtt(c.ws_port, 5, transport="websockets")
    v5.subscribe("ws/+/temp", qos=1)
    v4 = Mqtt(c.ws_port, 4, transport="websockets", ws_path="/")
    v4.subscribe("ws/#", qos=2)
    # TCP publisher -> both WebSocket subscribers.
    tcp = Mqtt(c.mqtt_port, 4)
    tcp.publish("ws/a/temp", b"21.5", qos=1)
    assert v5.expect(1)[0].payload == b"21.5"
    assert v4.expect(1)[0].payload == b"21.5"
    # WebSocket publisher (MQTT 5, user property) -> Kafka consumer and a TCP subscriber.
    tcp.subscribe("ws/b/#", qos=1)
    pub = Mqtt(c.ws_port, 5, client_id="ws-pub", transport="websockets")
    pub.publish("ws/b/temp", b"22.0", qos=1, props=props(UserProperty=[("unit", "C")]))
    pub.publish("ws/b/temp", b"x" * 100_000, qos=2)
    got = tcp.expect(2)
    assert [m.payload for m in got] == [b"22.0", b"x" * 100_000]
    recs = ck_read_all(c.bootstrap, "ws.b.temp")
    assert [r.value for r in recs] == [b"22.0", b"x" * 100_000]
    h = dict(recs[0].headers)
    assert recs[0].key == b"ws-pub"
    assert h["mqtt.topic"] == b"ws/b/temp" and h["mqtt.user.unit"] == b"C"
    # ... and the WebSocket subscribers (the 100 kB one spans many TCP segments).
    got = v5.expect(2)
    assert [m.payload for m in got] == [b"22.0", b"x" * 100_000]
    assert ("unit", "C") in got[0].properties.UserProperty
    assert [m.payload for m in v4.expect(2)] == [b"22.0", b"x" * 100_000]
    # Kafka produce -> WebSocket subscriber, headers back as user properties.
    ck_produce(c.bootstrap, "ws.k.temp", [{"value": b"from-kafka", "headers": [("site", b"s1")]}])
    m = v5.expect(1)[0]
    assert (m.topic, m.payload) == ("ws/k/temp", b"from-kafka")
    assert ("site", "s1") in m.properties.UserProperty


def test_websocket_persistent_session_resumes(cloud_factory):
    c = ws_cloud(cloud_factory)
    sub = Mqtt(c.ws_port, 4, client_id="ws-keep", clean=False, transport="websockets")
    sub.subscribe("keep/#", qos=1)
    sub.close()
    Mqtt(c.mqtt_port, 4).publish("keep/1", b"while-away", qos=1)
    back = Mqtt(c.ws_port, 4, client_id="ws-keep", clean=False, transport="websockets")
    assert back.connack[0].session_present
    assert back.expect(1)[0].payload == b"while-away"


def test_wss_listener(cloud_factory, tmp_path):
    ca, cert, key = make_certs(tmp_path)
    c = start_mqtt_cloud(cloud_factory, {"mqtt": {"websocket": {
        "listen": "127.0.0.1:0", "cert": str(cert), "key": str(key)}}})
    port = mqtt_port(c, "mqtt-wss")
    sub = Mqtt(port, 5, transport="websockets", tls={"ca_certs": str(ca)})
    sub.subscribe("secure/ws", qos=2)
    Mqtt(c.mqtt_port, 5).publish("secure/ws", b"over-wss", qos=2)
    assert sub.expect(1)[0].payload == b"over-wss"
    # A client without TLS is dropped; the listener keeps serving.
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(upgrade_request())
    read_until_closed(s)
    assert Mqtt(port, 4, transport="websockets", tls={"ca_certs": str(ca)}).connack[1] == 0


def upgrade_request(protocol: str | None = "mqtt") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /mqtt HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response_head(s: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, f"closed before the HTTP response ended: {head!r}"
        head += chunk
    return head


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def assert_ws_serves(c):
    m = Mqtt(c.ws_port, 5, transport="websockets")
    m.subscribe("still/ok", qos=1)
    Mqtt(c.mqtt_port, 4).publish("still/ok", b"yes", qos=1)
    assert m.expect(1)[0].payload == b"yes"


def test_bad_websocket_input_closes_only_that_connection(cloud_factory):
    c = ws_cloud(cloud_factory)
    # Plain HTTP without an upgrade: closed, never switched.
    s = socket.create_connection(("127.0.0.1", c.ws_port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert not read_until_closed(s).startswith(b"HTTP/1.1 101")
    # MQTT bytes straight to the WebSocket port.
    s = socket.create_connection(("127.0.0.1", c.ws_port), timeout=10)
    s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
    read_until_closed(s)
    # Only other subprotocols offered: 400.
    s = socket.create_connection(("127.0.0.1", c.ws_port), timeout=10)
    s.sendall(upgrade_request("chat"))
    assert read_until_closed(s).startswith(b"HTTP/1.1 400")
    # An upgraded connection that sends a text frame (the spec: close the connection).
    s = socket.create_connection(("127.0.0.1", c.ws_port), timeout=10)
    s.sendall(upgrade_request())
    head = read_response_head(s)
    assert head.startswith(b"HTTP/1.1 101") and b"sec-websocket-protocol: mqtt" in head.lower()
    s.sendall(masked_frame(0x1, b'{"connect":true}'))
    read_until_closed(s)
    # A CONNECT split over two binary frames, answered by a CONNACK.
    s = socket.create_connection(("127.0.0.1", c.ws_port), timeout=10)
    s.sendall(upgrade_request())
    read_response_head(s)
    connect = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02ws"
    s.sendall(masked_frame(0x2, connect[:3]) + masked_frame(0x2, connect[3:]))
    frame = s.recv(64)
    assert frame[:2] == b"\x82\x04" and frame[2:6] == b"\x20\x02\x00\x00", frame
    s.close()
    assert_ws_serves(c)
    c.assert_alive()


def test_websocket_config_errors_name_the_key(tmp_path):
    err = start_error(tmp_path, f"  websocket:\n    listen: 127.0.0.1:0\n    cert: {tmp_path / 'c.pem'}\n")
    assert b"mqtt.websocket" in err, err
    err = start_error(tmp_path, f"  websocket:\n    listen: 127.0.0.1:0\n    cert: {tmp_path / 'missing.pem'}\n"
                      f"    key: {tmp_path / 'missing.key'}\n")
    assert b"mqtt.websocket" in err and b"missing.pem" in err, err


@pytest.mark.timeout(180)
def test_idle_websocket_connections_stay_small(cloud_factory):
    """2,000 idle WebSocket connections: RSS per connection. The task of a connection
    once held room for the TLS handshakes and a TLS connection whatever its listener
    (26.8 KB each, measured); boxed, 13.7 KB (an idle TCP connection: 6.5 KB)."""
    n = 2000
    raise_file_limit(n + 500)
    c = ws_cloud(cloud_factory)
    rss0 = c.rss_kb()
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", c.ws_port), timeout=30)
            s.sendall(upgrade_request())
            rest = read_response_head(s).split(b"\r\n\r\n", 1)[1]
            cid = f"idle-{i}".encode()
            vh = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
            s.sendall(masked_frame(0x2, bytes([0x10, len(vh)]) + vh))
            while len(rest) < 6:
                chunk = s.recv(64)
                assert chunk, "closed before the CONNACK"
                rest += chunk
            assert rest[:6] == b"\x82\x04\x20\x02\x00\x00", rest
            socks.append(s)
        per_conn = (c.rss_kb() - rss0) * 1024 / n
        print(f"\n{n} idle websocket connections: {per_conn:.0f} bytes each")
        assert per_conn < 20_000, f"{per_conn:.0f} bytes per idle websocket connection"
    finally:
        for s in socks:
            s.close()
    # paho selects on its socket, which cannot watch descriptors above 1024: check once
    # the idle ones are closed.
    assert_ws_serves(c)
