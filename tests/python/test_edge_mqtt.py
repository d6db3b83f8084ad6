"""Edge MQTT side with real clients: mosquitto_pub/sub over MQTT 3.1.1 and 5, local
subscribers live while the uplink is down, everything matching the uplink filters in the
buffer, and config errors that name the key."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from edge_fixtures import Edge, dead_bootstrap, edge_binary, edge_factory  # noqa: F401
from helpers import wait_for


class Sub:
    """A mosquitto_sub process whose output lines are collected by a thread."""

    def __init__(self, addr, version: str, topics: list[str]):
        args = ["mosquitto_sub", "-h", addr[0], "-p", str(addr[1]), "-V", version, "-q", "1",
                "-v", "-i", f"sub-{version}-{time.monotonic_ns()}"]
        for t in topics:
            args += ["-t", t]
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.append(line.strip())

    def close(self):
        self.p.terminate()
        self.p.wait(5)


def pub(addr, version: str, topic: str, msg: str, qos: int, extra: tuple[str, ...] = ()):
    p = subprocess.run(
        ["mosquitto_pub", "-h", addr[0], "-p", str(addr[1]), "-V", version, "-t", topic,
         "-m", msg, "-q", str(qos), *extra],
        timeout=20, capture_output=True, text=True,
    )
    assert p.returncode == 0, f"mosquitto_pub {topic} exited {p.returncode}: {p.stderr}"


@pytest.mark.timeout(90)
def test_mosquitto_both_versions_live_while_uplink_down(edge_factory):
    """Both versions' subscribers get both versions' publishes live (MQTT 5 ones with a
    user property too), with the uplink down."""
    edge = edge_factory({"cloud": {"bootstrap": dead_bootstrap()},
                         "uplink": {"filters": [{"filter": "cam/#", "priority": 1}]}})
    subs = {}
    for version, addr in (("mqttv311", edge.v4), ("mqttv5", edge.v5)):
        s = Sub(addr, version, ["cam/#", "probe/" + version])
        subs[version] = s
        # mosquitto_sub has no "subscribed" signal: publish probes until one arrives.
        wait_for(lambda s=s, v=version, a=addr: pub(a, v, "probe/" + v, "ping", 0) or any(
            line.startswith("probe/") for line in s.lines), 20, interval=0.1,
            what=f"{version} subscriber live")
    sent = []
    for version, addr in (("mqttv311", edge.v4), ("mqttv5", edge.v5)):
        # MQTT 5 publishes carry a user property: the 3.1.1 subscriber gets them without
        # it (rumqttd's v4 writer used to panic on it, and that subscriber got nothing).
        extra = ("-D", "publish", "user-property", "site", "a") if version == "mqttv5" else ()
        for qos in (0, 1, 2):
            topic = f"cam/{version}/q{qos}"
            pub(addr, version, topic, f"hello-{version}-{qos}", qos, extra)
            sent.append(f"{topic} hello-{version}-{qos}")
    for version, s in subs.items():
        got = lambda s=s: sorted(x for x in s.lines if x.startswith("cam/"))  # noqa: E731
        wait_for(lambda: len(got()) >= len(sent), 20, what=lambda: f"{version} got {got()}")
        assert got() == sorted(sent), version
        s.close()
    # The uplink is down: every cam/ publish (all QoS, both versions) is in the buffer;
    # the probes (not matching the uplink filter) are not.
    m = wait_for(lambda: (m := edge.metrics()).get("edge_ingest_records_total") == 6 and m,
                 10, what=lambda: f"ingest metrics {edge.metrics()}")
    assert m["edge_backlog_records"] == 6
    assert m["edge_uplink_up"] == 0
    assert edge.proc.poll() is None


def test_config_error_names_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("buffer:\n  full_policy: explode\n")
    p = subprocess.run([str(edge_binary()), "--config", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2
    assert str(cfg) in p.stderr and "buffer.full_policy" in p.stderr, p.stderr
    cfg.write_text("mqtt:\n  nope: 1\n")
    p = subprocess.run([str(edge_binary()), "--config", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "nope" in p.stderr, p.stderr


@pytest.mark.timeout(60)
def test_keep_alive_zero_is_accepted(edge_factory):
    """MQTT allows keep alive 0 (no keep-alive) and some device stacks send it; rumqttd
    alone closes such connections before the CONNACK. Both listeners accept them, and
    the clients publish and receive (paho-mqtt, 3.1.1 and 5)."""
    from mqtt_fixtures import Mqtt
    edge = edge_factory({"cloud": {"bootstrap": dead_bootstrap()}})
    for version, (_, port) in ((4, edge.v4), (5, edge.v5)):
        c = Mqtt(port, version, keepalive=0)
        c.subscribe(f"ka0/{version}/#", qos=1)
        c.publish(f"ka0/{version}/x", b"no keep alive", qos=1)
        assert [m.payload for m in c.expect(1, timeout=20)] == [b"no keep alive"]
        c.close()
