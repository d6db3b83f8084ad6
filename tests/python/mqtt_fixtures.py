"""Fixtures and helpers for the cloud's MQTT view (issue 4).

`mqtt_cloud` is the `cloud` fixture with the MQTT listener on 127.0.0.1:0; the port is
read from the `listening mqtt 127.0.0.1:PORT` line the binary prints after the kafka line.
`Mqtt` wraps a paho-mqtt client (3.1.1 or 5) with blocking connect/subscribe/publish and a
queue of received messages, so tests wait on events, never on sleeps.
"""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import threading
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from conftest import deep_merge
from helpers import wait_for

LISTEN_RE = re.compile(r"^listening (mqtts?|mqtt-wss?) 127\.0\.0\.1:(\d+)\s*$")
MQTT_OVERRIDES = {"mqtt": {"listen": "127.0.0.1:0"}}


def mqtt_port(cloud, scheme: str = "mqtt") -> int:
    def find():
        for line in list(cloud._stdout_lines):
            m = LISTEN_RE.match(line)
            if m and m.group(1) == scheme:
                return int(m.group(2))
        return None

    return wait_for(find, 15, what=lambda: f"'listening {scheme}' on stdout: {cloud._stdout_lines!r}")


def start_mqtt_cloud(cloud_factory, overrides: dict | None = None, name: str = "cloud"):
    c = cloud_factory(deep_merge(MQTT_OVERRIDES, overrides), name=name)
    c.mqtt_port = mqtt_port(c)
    return c


def restart(c, kill: bool = True):
    c.restart(kill=kill)
    c.mqtt_port = mqtt_port(c)
    return c


def start_error(tmp_path, mqtt_extra: str) -> bytes:
    """Starts the cloud with `mqtt_extra` (YAML lines under `mqtt:`) added to a minimal
    config; the start must fail. Returns its stderr."""
    from conftest import cloud_binary
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'd'}\nkafka:\n  listen: 127.0.0.1:0\nmqtt:\n"
                   f"  listen: 127.0.0.1:0\n{mqtt_extra}")
    p = subprocess.run([str(cloud_binary()), "--config", str(cfg)], capture_output=True, timeout=30)
    assert p.returncode != 0, f"started with a bad config: {p.stderr!r}"
    return p.stderr


def raise_file_limit(want: int):
    """Raises this process's soft limit on open files to `want` (clouds started after it
    inherit it; nothing changes system-wide), or skips the test if the hard limit is
    lower."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want:
        pytest.skip(f"hard file limit {hard} < {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


@pytest.fixture
def mqtt_cloud(cloud_factory, request):
    marker = request.node.get_closest_marker("cloud_config")
    return start_mqtt_cloud(cloud_factory, marker.args[0] if marker else None)


class Mqtt:
    """A paho client with blocking helpers. `version` is 4 (3.1.1) or 5."""

    def __init__(self, port: int, version: int = 4, client_id: str | None = None, clean: bool = True,
                 keepalive: int = 60, will: tuple | None = None, connect_props: Properties | None = None,
                 tls: dict | None = None, connect: bool = True, transport: str = "tcp",
                 ws_path: str = "/mqtt"):
        self.port = port
        self.version = version
        self.client_id = client_id if client_id is not None else f"t-{uuid.uuid4().hex[:10]}"
        proto = paho.MQTTv5 if version == 5 else paho.MQTTv311
        kw = {"protocol": proto, "client_id": self.client_id}
        if version != 5:
            kw["clean_session"] = clean
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, transport=transport, **kw)
        if transport == "websockets":
            self.c.ws_set_options(path=ws_path)
        self.clean = clean
        self.keepalive = keepalive
        self.connect_props = connect_props
        self.messages: queue.Queue = queue.Queue()
        self.connack = None
        self.disconnected = threading.Event()
        self.disconnect_reason = None
        self._connected = threading.Event()
        self._subacks: dict[int, object] = {}
        self._acks: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = self._on_disconnect
        if will:
            topic, payload, qos, retain, *rest = will
            self.c.will_set(topic, payload, qos, retain, properties=rest[0] if rest else None)
        if tls:
            self.c.tls_set(**tls)
        if connect:
            self.connect()

    def _on_connect(self, c, u, flags, rc, props=None):
        self.connack = (flags, rc, props)
        self._connected.set()

    def _on_subscribe(self, c, u, mid, codes, props=None):
        with self._lock:
            self._subacks[mid] = codes

    def _on_publish(self, c, u, mid, rc=None, props=None):
        with self._lock:
            self._acks.setdefault(mid, threading.Event()).set()

    def _on_disconnect(self, c, u, flags, rc, props=None):
        self.disconnect_reason = rc
        self.disconnected.set()

    def connect(self, timeout: float = 10):
        self._connected.clear()
        self.disconnected.clear()
        kw = {"keepalive": self.keepalive}
        if self.version == 5:
            kw["clean_start"] = self.clean
            if self.connect_props is not None:
                kw["properties"] = self.connect_props
        self.c.connect("127.0.0.1", self.port, **kw)
        self.c.loop_start()
        assert self._connected.wait(timeout), "no CONNACK"
        flags, rc, _ = self.connack
        assert not rc.is_failure, f"connect refused: {rc}"
        return self.connack

    def subscribe(self, topic, qos: int = 0, timeout: float = 10, **kw):
        r, mid = self.c.subscribe(topic, qos, **kw)
        assert r == paho.MQTT_ERR_SUCCESS, r
        wait_for(lambda: mid in self._subacks, timeout, what=f"SUBACK for {topic}")
        return self._subacks[mid]

    def unsubscribe(self, topic, timeout: float = 10):
        r, mid = self.c.unsubscribe(topic)
        assert r == paho.MQTT_ERR_SUCCESS, r
        wait_for(lambda: mid in self._subacks, timeout, what=f"UNSUBACK for {topic}")

    def publish(self, topic, payload, qos: int = 0, retain: bool = False, props: Properties | None = None,
                timeout: float = 10):
        info = self.c.publish(topic, payload, qos, retain, properties=props)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"publish to {topic} not acknowledged"
        return info

    def expect(self, n: int = 1, timeout: float = 10) -> list:
        out = []
        for _ in range(n):
            try:
                out.append(self.messages.get(timeout=timeout))
            except queue.Empty:
                raise AssertionError(f"received {len(out)} of {n} messages: "
                                     f"{[(m.topic, m.payload) for m in out]}")
        return out

    def expect_none(self, probe: "Mqtt", probe_topic: str):
        """Proves nothing else is queued: publishes a marker this client receives, and
        checks it arrives first (per-connection order makes this a barrier)."""
        probe.publish(probe_topic, b"__barrier__", qos=1)
        m = self.expect(1)[0]
        assert m.payload == b"__barrier__", f"unexpected message {m.topic} {m.payload!r}"

    def close(self):
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()

    def drop(self):
        """Closes the socket without DISCONNECT (the will fires)."""
        self.c.loop_stop()
        self.c.socket().close()


def props(kind=PacketTypes.PUBLISH, **kv) -> Properties:
    p = Properties(kind)
    for k, v in kv.items():
        setattr(p, k, v)
    return p


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (remaining length, property lengths)."""
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def read_until_closed(s: socket.socket, timeout: float = 10) -> bytes:
    """Reads until the server closes the socket (EOF or reset)."""
    s.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return data
        if not chunk:
            return data
        data += chunk


def mosquitto_sub(port: int, topic: str, count: int, extra: list[str] = (), timeout: int = 20):
    """Starts mosquitto_sub and waits until its subscription is in place (-d prints SUBACK)."""
    p = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", str(count),
                          "-W", str(timeout), "-d", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []

    def suback():
        # "Subscribed (mid: ...)" is printed by mosquitto_sub's callback, after SUBACK.
        line = p.stdout.readline().decode()
        lines.append(line)
        return line.startswith("Subscribed (mid") or (p.poll() is not None and "exit")

    wait_for(suback, timeout, interval=0, what=lambda: f"mosquitto_sub SUBACK: {lines}")
    return p


def sub_payloads(p, timeout: float = 30) -> list[str]:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"mosquitto_sub exited {p.returncode}: {err.decode()}"
    debug = ("Client ", "Subscribed (mid")
    return [line for line in out.decode().splitlines() if line and not line.startswith(debug)]


def mosquitto_pub(port: int, topic: str, message: str, extra: list[str] = ()):
    p = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-m", message, *extra],
                       capture_output=True, timeout=20)
    assert p.returncode == 0, p.stderr.decode()
