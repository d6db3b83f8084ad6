"""The edge's downlink: cloud messages on `downlink.filters` reach the gateway's local MQTT
subscribers (3.1.1 and 5), from MQTT and Kafka publishers alike; what the edge sent up
itself is not delivered twice; retained messages stay retained; what the cloud queued
while the edge was cut off or restarted arrives when it reconnects (its session is
persistent)."""

from __future__ import annotations

import socket
import threading

import pytest

from edge_fixtures import Publisher, edge_binary, edge_factory, free_port  # noqa: F401
from helpers import ck_produce, make_certs, wait_for
from mqtt_fixtures import Mqtt, mqtt_port, props, start_mqtt_cloud

EDGE_ID = "gw-7"


class CutProxy:
    """A TCP proxy to 127.0.0.1:`target` that can cut every connection it carries and
    refuse new ones until restored (an uplink outage for the downlink)."""

    def __init__(self, target: int):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if not self.open:
                    c.close()
                    continue
                try:
                    u = socket.create_connection(("127.0.0.1", self.target))
                except OSError:
                    c.close()
                    continue
                self.socks += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            self.open = False
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.socks.clear()

    def restore(self):
        with self.lock:
            self.open = True

    def close(self):
        self.cut()
        self.listener.close()


def downlink_edge(edge_factory, cloud, broker_port: int, filters: list[str], **extra):
    return edge_factory({
        "edge_id": EDGE_ID,
        "cloud": {"bootstrap": cloud.bootstrap},
        "downlink": {"broker": f"127.0.0.1:{broker_port}", "filters": filters,
                     "backoff_initial_ms": 50, "backoff_max_ms": 200, **extra},
    })


def metric(edge, name: str) -> float:
    return edge.metrics().get(name, 0.0)


def wait_up(edge, up: float = 1.0):
    wait_for(lambda: metric(edge, "edge_downlink_up") == up, 30,
             what=lambda: f"edge_downlink_up == {up}\n{edge.stderr_tail()}")


@pytest.fixture
def cloud_and_binary(cloud_factory):
    if not edge_binary().exists():
        pytest.skip("edge binary not built")
    return start_mqtt_cloud(cloud_factory)


@pytest.mark.timeout(120)
def test_cloud_mqtt_and_kafka_messages_reach_local_subscribers(cloud_and_binary, edge_factory):
    """An MQTT 5 publish to the cloud (with user properties, content type, response topic
    and correlation data) and a Kafka record produced to the mapped topic both reach a
    3.1.1 and a 5 subscriber on the edge, in order per topic; a topic outside the
    filters does not."""
    cloud = cloud_and_binary
    edge = downlink_edge(edge_factory, cloud, cloud.mqtt_port, [f"cmd/{EDGE_ID}/#"])
    wait_up(edge)
    sub4 = Mqtt(edge.v4[1], 4)
    sub4.subscribe("cmd/#", qos=1)
    sub5 = Mqtt(edge.v5[1], 5)
    sub5.subscribe("cmd/#", qos=1)
    pub = Mqtt(cloud.mqtt_port, 5)
    # Not for this gateway: the cloud never sends it to the downlink's session.
    pub.publish("cmd/gw-other/reboot", b"not for gw-7", qos=1)
    p = props(UserProperty=[("operator", "ana")], ContentType="text/plain",
              ResponseTopic=f"reply/{EDGE_ID}", CorrelationData=b"\x01\x02")
    for i in range(10):
        pub.publish(f"cmd/{EDGE_ID}/reboot", f"reboot {i}".encode(), qos=1, props=p)
    got5 = sub5.expect(10, timeout=30)
    assert [(m.topic, m.payload) for m in got5] == [
        (f"cmd/{EDGE_ID}/reboot", f"reboot {i}".encode()) for i in range(10)]
    first = got5[0].properties
    assert ("operator", "ana") in first.UserProperty
    assert first.ContentType == "text/plain"
    assert first.ResponseTopic == f"reply/{EDGE_ID}"
    assert first.CorrelationData == b"\x01\x02"
    got4 = sub4.expect(10, timeout=30)
    assert [m.payload for m in got4] == [f"reboot {i}".encode() for i in range(10)]

    # A Kafka producer's record, no headers: the cloud maps the name back.
    ck_produce(cloud.bootstrap, f"cmd.{EDGE_ID}.fw", [{"value": b"firmware 2.1"}])
    m5 = sub5.expect(1, timeout=30)[0]
    assert (m5.topic, m5.payload) == (f"cmd/{EDGE_ID}/fw", b"firmware 2.1")
    m4 = sub4.expect(1, timeout=30)[0]
    assert (m4.topic, m4.payload) == (f"cmd/{EDGE_ID}/fw", b"firmware 2.1")
    assert metric(edge, "edge_downlink_messages_total") == 11
    # Nothing else was delivered locally: a barrier published on the edge comes next.
    local = Mqtt(edge.v4[1], 4)
    sub4.expect_none(local, "cmd/barrier")
    sub5.expect_none(local, "cmd/barrier")
    for c in (sub4, sub5, pub, local):
        c.close()


@pytest.mark.timeout(120)
def test_what_the_edge_sent_up_is_not_delivered_twice(cloud_and_binary, edge_factory):
    """A device on the gateway publishes on a topic the downlink also subscribes to: the
    uplink carries it to the cloud, whose MQTT view sends it back down (edge.id = this
    edge's), and the downlink drops it, so local subscribers get one copy."""
    cloud = cloud_and_binary
    edge = downlink_edge(edge_factory, cloud, cloud.mqtt_port, ["status/#"])
    wait_up(edge)
    sub = Mqtt(edge.v4[1], 4)
    sub.subscribe("status/#", qos=1)
    watcher = Mqtt(cloud.mqtt_port, 5)
    watcher.subscribe("status/#", qos=1)
    dev = Publisher(edge.v4, "sensor-1")
    dev.publish("status/sensor-1", b"online", qos=1)
    assert [m.payload for m in sub.expect(1, timeout=30)] == [b"online"]
    # The cloud has it (from the uplink), with this edge's id ...
    up = watcher.expect(1, timeout=60)[0]
    assert ("edge.id", EDGE_ID) in up.properties.UserProperty
    # ... and sent it to the downlink, which dropped it.
    wait_for(lambda: metric(edge, "edge_downlink_looped_total") == 1, 30,
             what=lambda: f"one looped message: {edge.metrics()}")
    assert metric(edge, "edge_downlink_messages_total") == 0
    sub.expect_none(Mqtt(edge.v4[1], 4), "status/barrier")
    # A cloud-side publish on the same filter (no edge.id) is delivered.
    watcher.publish("status/sensor-1", b"reset by operator", qos=1)
    assert [m.payload for m in sub.expect(1, timeout=30)] == [b"reset by operator"]
    dev.close()
    sub.close()
    watcher.close()


@pytest.mark.timeout(120)
def test_retained_cloud_message_is_retained_on_the_edge(cloud_and_binary, edge_factory):
    """A retained configuration published before the edge ever connected reaches it on
    its first subscribe and stays retained locally: a subscriber that comes later gets
    it with the retain flag; once cleared in the cloud, it is gone on the edge too."""
    cloud = cloud_and_binary
    pub = Mqtt(cloud.mqtt_port, 5)
    pub.publish(f"config/{EDGE_ID}/sampling", b"rate=10hz", qos=1, retain=True)
    edge = downlink_edge(edge_factory, cloud, cloud.mqtt_port, [f"config/{EDGE_ID}/#"])
    wait_for(lambda: metric(edge, "edge_downlink_messages_total") == 1, 30,
             what=lambda: f"the retained message downlinked: {edge.metrics()}")
    late = Mqtt(edge.v5[1], 5)
    late.subscribe("config/#", qos=1)
    m = late.expect(1, timeout=30)[0]
    assert (m.topic, m.payload, m.retain) == (f"config/{EDGE_ID}/sampling", b"rate=10hz", True)
    # Clearing it in the cloud (an empty retained publish) clears it on the edge too.
    pub.publish(f"config/{EDGE_ID}/sampling", b"", qos=1, retain=True)
    wait_for(lambda: metric(edge, "edge_downlink_messages_total") == 2, 30,
             what=lambda: f"the clearing publish downlinked: {edge.metrics()}")
    later = Mqtt(edge.v5[1], 5)
    later.subscribe("config/#", qos=1)
    later.expect_none(Mqtt(edge.v4[1], 4), "config/barrier")
    pub.close()
    late.close()
    later.close()


@pytest.mark.timeout(180)
def test_messages_queued_while_cut_off_or_restarted_arrive_in_order(cloud_and_binary, edge_factory):
    """The downlink's link to the cloud is cut; the cloud takes 20 commands for the edge;
    the edge is killed and restarted while still cut off; when the link returns, all 20
    arrive at the local subscriber in order (the session is persistent on the cloud),
    then live ones follow."""
    cloud = cloud_and_binary
    proxy = CutProxy(cloud.mqtt_port)
    try:
        edge = downlink_edge(edge_factory, cloud, proxy.port, [f"cmd/{EDGE_ID}/#"],
                             keep_alive_secs=2)
        wait_up(edge)
        proxy.cut()
        wait_up(edge, 0)
        pub = Mqtt(cloud.mqtt_port, 5)
        for i in range(10):
            pub.publish(f"cmd/{EDGE_ID}/set", f"queued {i}".encode(), qos=1)
        edge.kill()
        edge.start()
        for i in range(10, 20):
            pub.publish(f"cmd/{EDGE_ID}/set", f"queued {i}".encode(), qos=1)
        sub = Mqtt(edge.v4[1], 4)
        sub.subscribe("cmd/#", qos=1)
        assert metric(edge, "edge_downlink_up") == 0
        proxy.restore()
        got = sub.expect(20, timeout=60)
        assert [m.payload for m in got] == [f"queued {i}".encode() for i in range(20)]
        pub.publish(f"cmd/{EDGE_ID}/set", b"live", qos=1)
        assert sub.expect(1, timeout=30)[0].payload == b"live"
        assert metric(edge, "edge_downlink_up") == 1
        sub.close()
        pub.close()
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_downlink_over_tls_with_credentials(cloud_factory, edge_factory, tmp_path):
    """The downlink verifies the cloud's MQTT TLS certificate against `downlink.tls.ca`
    and logs in with `downlink.credentials`; a wrong password is refused by the cloud
    and retried (counted), never subscribed."""
    if not edge_binary().exists():
        pytest.skip("edge binary not built")
    ca, cert, key = make_certs(tmp_path)
    cloud = start_mqtt_cloud(cloud_factory, {"mqtt": {
        "tls": {"listen": "127.0.0.1:0", "cert": str(cert), "key": str(key)},
        "credentials": {"gw": "s3cret", "operator": "op"}}})
    tls_port = mqtt_port(cloud, "mqtts")
    tls = {"ca": str(ca)}
    bad = downlink_edge(edge_factory, cloud, tls_port, ["cmd/#"], tls=tls,
                        credentials={"username": "gw", "password": "wrong"})
    wait_for(lambda: metric(bad, "edge_downlink_reconnects_total") >= 2, 30,
             what=lambda: f"refused logins retried: {bad.metrics()}")
    assert metric(bad, "edge_downlink_up") == 0
    bad.stop()
    edge = edge_factory({
        "edge_id": EDGE_ID, "cloud": {"bootstrap": cloud.bootstrap},
        "downlink": {"broker": f"127.0.0.1:{tls_port}", "filters": ["cmd/#"], "tls": tls,
                     "credentials": {"username": "gw", "password": "s3cret"}}},
        name="edge-ok")
    wait_up(edge)
    sub = Mqtt(edge.v4[1], 4)
    sub.subscribe("cmd/#", qos=1)
    op = Mqtt(cloud.mqtt_port, 5, client_id="operator", connect=False)
    op.c.username_pw_set("operator", "op")
    op.connect()
    op.publish("cmd/all/ping", b"over tls", qos=1)
    assert sub.expect(1, timeout=30)[0].payload == b"over tls"
    sub.close()
    op.close()


def test_bad_downlink_config_names_the_key(tmp_path):
    """A downlink without filters stops the edge at start with the key in the message."""
    import subprocess
    if not edge_binary().exists():
        pytest.skip("edge binary not built")
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("downlink:\n  broker: 127.0.0.1:1883\n")
    p = subprocess.run([str(edge_binary()), "--config", str(cfg)], capture_output=True, timeout=30)
    assert p.returncode == 2, p
    assert b"downlink.filters" in p.stderr, p.stderr
