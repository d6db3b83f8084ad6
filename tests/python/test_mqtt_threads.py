"""MQTT connections on their own threads (`mqtt.threads`): connections spread over
several single-threaded event loops still see one log, whichever thread publishes,
whichever protocol appends, and the TLS listener is served the same way."""

from __future__ import annotations

import os
import subprocess

from helpers import ck_produce, make_certs, wait_for
from mqtt_fixtures import Mqtt, mqtt_cloud, mqtt_port, start_mqtt_cloud  # noqa: F401


def mqtt_thread_names(pid: int) -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass  # the thread ended meanwhile
    return sorted(n for n in names if n.startswith("mqtt-"))


def test_connections_on_different_threads_share_the_log(cloud_factory, tmp_path):
    ca, cert, key = make_certs(tmp_path)
    c = start_mqtt_cloud(cloud_factory, {"mqtt": {
        "threads": 3,
        "tls": {"listen": "127.0.0.1:0", "cert": str(cert), "key": str(key)}}})
    # A thread names itself once it runs, which may be after the listening lines.
    want = ["mqtt-0", "mqtt-1", "mqtt-2"]
    wait_for(lambda: mqtt_thread_names(c.pid) == want or None, 10,
             what=lambda: f"threads {want}, have {mqtt_thread_names(c.pid)}")
    tls_port = mqtt_port(c, "mqtts")
    # Round-robin: five plain connections land on threads 0,1,2,0,1; TLS ones on their own turn.
    subs = [Mqtt(c.mqtt_port, v) for v in (4, 5, 4, 5)]
    for s in subs:
        s.subscribe("mt/#", qos=1)
    tls_sub = Mqtt(tls_port, 5, tls={"ca_certs": str(ca)})
    tls_sub.subscribe("mt/#", qos=1)
    pub = Mqtt(c.mqtt_port, 5)
    everyone = subs + [tls_sub]
    for i in range(20):
        pub.publish("mt/a", f"m{i}".encode(), qos=1)
    for s in everyone:
        assert [m.payload for m in s.expect(20)] == [f"m{i}".encode() for i in range(20)]
    # A publish over TLS and a Kafka produce reach every thread's subscribers too.
    tls_pub = Mqtt(tls_port, 4, tls={"ca_certs": str(ca)})
    tls_pub.publish("mt/b", b"over-tls", qos=1)
    ck_produce(c.bootstrap, "mt.c", [{"value": b"over-kafka", "headers": []}])
    for s in everyone:
        got = {(m.topic, m.payload) for m in s.expect(2)}
        assert got == {("mt/b", b"over-tls"), ("mt/c", b"over-kafka")}
    # mosquitto_sub on yet another connection, with a retained message.
    pub.publish("mt/retained", b"kept", qos=1, retain=True)
    p = subprocess.run(["mosquitto_sub", "-p", str(c.mqtt_port), "-t", "mt/retained", "-C", "1",
                        "-W", "10"], capture_output=True, timeout=20)
    assert p.returncode == 0 and p.stdout == b"kept\n", p
    for s in everyone + [pub, tls_pub]:
        s.close()


def test_default_thread_count_is_half_the_cores(mqtt_cloud):
    # `threads: 0` is half the cores, at least one.
    want = max(1, (os.cpu_count() or 1) // 2)
    names = [f"mqtt-{i}" for i in range(want)]
    wait_for(lambda: mqtt_thread_names(mqtt_cloud.pid) == names or None, 10,
             what=lambda: f"threads {names}, have {mqtt_thread_names(mqtt_cloud.pid)}")


def test_threads_is_validated(tmp_path):
    from conftest import cloud_binary
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'd'}\nmqtt:\n  threads: 300\n")
    p = subprocess.run([cloud_binary(), "--config", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2 and "mqtt.threads" in p.stderr, p.stderr
