"""KafkaJS (Node.js, its own implementation of the Kafka protocol) against the cloud:
idempotent produce, a consumer group of two, the admin calls a user makes, and an MQTT
publish read as a Kafka record. The client runs as `tests/js/kafkajs_client.js`
(`tests/run.sh` installs it with `npm ci`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

import kwire
from edge_fixtures import Publisher, edge_binary, edge_factory, free_port  # noqa: F401
from helpers import assert_batches_codec, ck_create_topic, ck_produce, ck_read_all
from mqtt_fixtures import Mqtt, mqtt_cloud, props  # noqa: F401

JS = Path(__file__).resolve().parent.parent / "js"


@pytest.fixture(scope="module")
def node() -> str:
    """Node.js with KafkaJS installed; missing, the test skips (fails under CI=true)."""
    exe = shutil.which("node")
    if exe and (JS / "node_modules" / "kafkajs").is_dir():
        return exe
    why = "node or tests/js/node_modules/kafkajs missing (tests/run.sh runs npm ci in tests/js)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def js(node: str, command: str, bootstrap: str, timeout: float = 90, **spec) -> dict:
    """Runs one client command to its end; returns its last JSON line."""
    p = subprocess.run([node, str(JS / "kafkajs_client.js"), command, bootstrap, json.dumps(spec)],
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"kafkajs {command} failed:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


class Group:
    """A KafkaJS consumer group running in the background: `ready()` waits until the group
    is stable with every member assigned, `result()` until it consumed what it expects."""

    def __init__(self, node: str, bootstrap: str, **spec):
        self.p = subprocess.Popen(
            [node, str(JS / "kafkajs_client.js"), "group", bootstrap, json.dumps(spec)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _line(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            self.p.wait(10)
            raise AssertionError(f"kafkajs group exited {self.p.returncode}:\n{self.p.stderr.read()[-3000:]}")
        return json.loads(line)

    def ready(self) -> dict:
        ready = self._line()
        assert ready.get("ready"), ready
        return ready

    def result(self) -> dict:
        out = self._line()
        assert self.p.wait(30) == 0, self.p.stderr.read()[-3000:]
        return out

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", ["none", "gzip"])
def test_idempotent_produce_is_read_back_exactly_once_by_confluent_kafka(node, module_cloud, codec):
    topic = f"kjs.produce.{codec}"
    ck_create_topic(module_cloud.bootstrap, topic, partitions=3)
    out = js(node, "produce", module_cloud.bootstrap, topic=topic, count=1000, batch=100,
             compression=codec)
    assert all(err == 0 for _, _, err in out["sends"]), out["sends"]
    recs = ck_read_all(module_cloud.bootstrap, topic)
    values = [r.value.decode() for r in recs]
    assert sorted(values) == sorted(f"v{i}" for i in range(1000)), "a record is missing or doubled"
    by_key: dict[bytes, list[int]] = {}
    for r in recs:
        h = dict(r.headers)
        n = int(h["n"])
        assert r.value == f"v{n}".encode() and r.key == f"k{n % 5}".encode()
        by_key.setdefault((r.partition, r.key), []).append(n)
    # KafkaJS partitions by key: each key's records are in one partition, in send order.
    assert len({k for _, k in by_key}) == 5
    for seq in by_key.values():
        assert seq == sorted(seq)
    # Offsets are dense per partition: no batch was written twice.
    for p in {r.partition for r in recs}:
        offs = [r.offset for r in recs if r.partition == p]
        assert offs == list(range(len(offs)))


@pytest.mark.timeout(150)
def test_group_of_two_shares_partitions_reads_everything_once_and_commits(node, module_cloud):
    topic, group = "kjs.group", "kjs-group"
    ck_create_topic(module_cloud.bootstrap, topic, partitions=4)
    g = Group(node, module_cloud.bootstrap, topic=topic, group=group, members=2, expect=800)
    try:
        ready = g.ready()
        assert ready["members"] == 2 and ready["protocol"], ready
        # Produced by another client (confluent-kafka) once both members hold partitions.
        ck_produce(module_cloud.bootstrap, topic,
                   [{"key": f"k{i}".encode(), "value": f"m{i}".encode()} for i in range(800)])
        out = g.result()
    finally:
        g.kill()
    recs = out["records"]
    counts = Counter(r["value"] for r in recs)
    assert set(counts) == {f"m{i}" for i in range(800)}
    assert max(counts.values()) == 1, "a record was delivered twice"
    # Each partition went to exactly one member, and both members had some.
    owner = {}
    for r in recs:
        assert owner.setdefault(r["partition"], r["member"]) == r["member"]
    assert set(owner.values()) == {0, 1}, owner
    # The final commits are the partitions' end offsets.
    ends = Counter(r["partition"] for r in recs)
    assert {p: off for p, off in out["committed"] if p in ends} == dict(ends)


@pytest.mark.timeout(90)
def test_admin_create_describe_grow_offsets_delete(node, module_cloud):
    topic = "kjs.admin"
    out = js(node, "admin", module_cloud.bootstrap, topic=topic, partitions=2,
             retention_ms=3600000, grow_to=5)
    assert out["created"] is True
    assert out["retention_ms"] == "3600000"
    assert out["partitions"] == [0, 1, 2, 3, 4]
    assert out["brokers"] == 1
    assert sorted(out["offsets"]) == [[p, 0, 0] for p in range(5)]
    assert len(out["by_time"]) == 5
    assert out["listed_after_delete"] is False


def test_admin_alter_configs_and_delete_records(node, module_cloud):
    """KafkaJS alterConfigs (AlterConfigs) changes retention.ms, read back by
    describeConfigs; deleteTopicRecords (DeleteRecords) below offset 3 of 10 makes the
    partition's low offset 3."""
    out = js(node, "alter", module_cloud.bootstrap, topic="kjs.alter", retention_ms=7200000,
             records=10, delete_before=3)
    assert out["retention_ms"] == "7200000"
    assert out["offsets"] == [[0, 3, 10]]


@pytest.mark.timeout(120)
def test_mqtt_publish_reaches_a_kafkajs_consumer_with_its_headers(node, mqtt_cloud):
    topic = "plant.kjs.temp"
    ck_create_topic(mqtt_cloud.bootstrap, topic, partitions=1)
    g = Group(node, mqtt_cloud.bootstrap, topic=topic, group="kjs-mqtt", members=1, expect=3)
    try:
        g.ready()
        pub = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="sensor-9")
        for i in range(3):
            pub.publish("plant/kjs/temp", f"{20 + i}".encode(), qos=1,
                        props=props(UserProperty=[("unit", "C")]))
        out = g.result()
    finally:
        g.kill()
    recs = out["records"]
    assert [r["value"] for r in recs] == ["20", "21", "22"]
    assert [r["offset"] for r in recs] == [0, 1, 2]
    for r in recs:
        assert r["key"] == "sensor-9"
        assert r["headers"]["mqtt.topic"] == "plant/kjs/temp"
        assert r["headers"]["mqtt.qos"] == "1"
        assert r["headers"]["mqtt.user.unit"] == "C"


@pytest.mark.timeout(150)
@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_edge_replicated_records_reach_a_kafkajs_consumer(node, cloud_factory, edge_factory,
                                                          compression):
    """The edge's uplink batches are served as stored. KafkaJS reads zstd with a
    registered codec (it has none built in; the client registers fzstd), and the edge's
    gzip batches (`cloud.compression: gzip`) as it ships, with no codec registered."""
    if not edge_binary().exists():
        pytest.skip("edge binary not built")
    port = free_port()
    cloud = cloud_factory({"kafka": {"listen": f"127.0.0.1:{port}"}})
    topic = "sitek.temp"
    ck_create_topic(cloud.bootstrap, topic, partitions=1)
    g = Group(node, cloud.bootstrap, topic=topic, group="kjs-edge", members=1, expect=3,
              zstd=compression == "zstd")
    try:
        g.ready()
        edge = edge_factory({"cloud": {"bootstrap": f"127.0.0.1:{port}",
                                       "compression": compression}})
        p = Publisher(edge.v4, "cam-k")
        for i in range(3):
            p.publish("sitek/temp", f"t{i}".encode(), qos=1)
        out = g.result()
        p.close()
    finally:
        g.kill()
    recs = out["records"]
    assert [r["value"] for r in recs] == ["t0", "t1", "t2"]
    for r in recs:
        assert r["headers"]["mqtt.topic"] == "sitek/temp"
        assert r["headers"]["edge.id"]
    assert_batches_codec(kwire.fetch_all_batches(cloud.host, cloud.port, topic), compression)
