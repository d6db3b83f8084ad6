"""The cloud's Prometheus endpoint (`metrics.listen`; the binary prints `listening metrics
ADDR`): counters follow what real clients do (confluent-kafka produce and fetch, paho
MQTT publish and subscribe, a compaction pass, DeleteRecords), connection gauges rise
and fall with the clients, gauges of the store are read at scrape time. Anything but
`GET /metrics` is a 404 and the endpoint keeps serving.
"""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request

import pytest

from helpers import ck_create_topic, ck_produce, ck_read_all, wait_for
from mqtt_fixtures import Mqtt, mqtt_port

LINE = re.compile(r"^listening metrics 127\.0\.0\.1:(\d+)\s*$")
SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def metrics_port(cloud) -> int:
    def find():
        for line in list(cloud._stdout_lines):
            m = LINE.match(line)
            if m:
                return int(m.group(1))
        return None

    return wait_for(find, 15, what="'listening metrics' on stdout")


def scrape(port: int) -> dict[str, float]:
    """name{labels} -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


@pytest.mark.timeout(120)
def test_metrics_follow_kafka_and_mqtt_clients(cloud_factory, topic_name):
    cloud = cloud_factory({"metrics": {"listen": "127.0.0.1:0"},
                           "mqtt": {"listen": "127.0.0.1:0"},
                           "storage": {"retention_check_interval_ms": 200}})
    port = metrics_port(cloud)
    before = scrape(port)
    assert before["cloud_kafka_produce_bytes_total"] == 0
    assert before["cloud_mqtt_connections"] == 0

    # Kafka: 3 flushes of 100 records to a compacted topic, read back.
    ck_create_topic(cloud.bootstrap, topic_name, config={"cleanup.policy": "compact"})
    for v in range(3):
        ck_produce(cloud.bootstrap, topic_name,
                   [{"key": b"k%d" % i, "value": b"v%d-%d" % (v, i) * 10} for i in range(100)])
    read = ck_read_all(cloud.bootstrap, topic_name)
    m = scrape(port)
    assert m['cloud_kafka_requests_total{api="Produce"}'] >= 3
    assert m['cloud_kafka_requests_total{api="Fetch"}'] >= 1
    assert m['cloud_kafka_requests_total{api="CreateTopics"}'] == 1
    produced = sum(len(r.value) for r in read)  # a lower bound of the batch bytes
    assert m["cloud_kafka_produce_bytes_total"] > produced * 0.9
    assert m["cloud_kafka_fetch_bytes_total"] > 0
    assert m["cloud_topics"] >= 1 and m["cloud_partitions"] >= m["cloud_topics"]
    # The pass removes the first round (the second is superseded only by the third, the
    # partition's last batch, which is never cleaned).
    wait_for(lambda: scrape(port)["cloud_compaction_records_removed_total"] == 100, 60,
             interval=0.3, what=lambda: f"compaction counted: {scrape(port)}")

    # MQTT: two connections, 5 publishes delivered to one subscriber.
    mp = mqtt_port(cloud)
    sub = Mqtt(mp, version=5)
    sub.subscribe("metrics/t", qos=1)
    pub = Mqtt(mp, version=4)
    assert scrape(port)["cloud_mqtt_connections"] == 2
    for i in range(5):
        pub.publish("metrics/t", b"m%d" % i, qos=1)
    sub.expect(5)
    m = scrape(port)
    assert m["cloud_mqtt_publishes_received_total"] >= 5
    assert m["cloud_mqtt_messages_sent_total"] >= 5
    sub.close()
    pub.close()
    wait_for(lambda: scrape(port)["cloud_mqtt_connections"] == 0, 15,
             what="MQTT connections gauge back to 0")


@pytest.mark.timeout(60)
def test_metrics_endpoint_answers_404_and_survives_garbage(cloud_factory):
    cloud = cloud_factory({"metrics": {"listen": "127.0.0.1:0"}})
    port = metrics_port(cloud)
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    assert ei.value.code == 404
    for junk in (b"\x00\xff" * 3000, b"GET /metrics", b""):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            try:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):
                    pass
            except OSError:
                # The responder reads at most 2 KiB of a request head, answers and closes:
                # the rest of the junk meets a closed socket (a reset, EPIPE while still
                # sending, ENOTCONN at the shutdown), which is not a crash.
                pass
    assert "cloud_topics" in scrape(port)
    cloud.assert_alive()


def test_metrics_are_off_unless_configured(cloud_factory):
    cloud = cloud_factory({})
    assert not any(LINE.match(line) for line in cloud._stdout_lines)
    assert any(line.startswith("listening kafka") for line in cloud._stdout_lines)
