"""Storage modes per topic (topic config `storage.mode`, config `storage.default_mode`):
a `memory` topic serves Kafka and MQTT like any other but never writes its records to
disk and starts empty after a restart, with offsets above the ones it handed out; a
`hybrid` topic acknowledges without waiting for an fsync and keeps everything across a
process kill."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType

from helpers import ck_admin, ck_create_topic, ck_produce, ck_read_all, ck_watermarks, wait_for
from mqtt_fixtures import Mqtt, mqtt_cloud, restart  # noqa: F401

MB = 1 << 20


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())


def mode_of(bootstrap: str, topic: str) -> str:
    a = ck_admin(bootstrap)  # kept alive until the answer: a dropped client cancels it
    (fut,) = a.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return fut.result(timeout=20)["storage.mode"].value


def produce_mb(bootstrap: str, topic: str, mb: int, tag: str) -> list:
    # Incompressible values, so stored bytes would show in the data directory.
    return ck_produce(bootstrap, topic, ({"value": tag.encode() + os.urandom(4000)}
                                         for _ in range(mb * MB // 4000)))


def test_memory_topic_writes_no_records_and_restarts_empty_above_its_offsets(cloud, topic_name):
    mem, disk = topic_name + ".mem", topic_name + ".disk"
    ck_create_topic(cloud.bootstrap, mem, config={"storage.mode": "memory"})
    ck_create_topic(cloud.bootstrap, disk)
    assert mode_of(cloud.bootstrap, mem) == "memory"
    assert mode_of(cloud.bootstrap, disk) == "persistent"  # the default, described

    before = dir_bytes(cloud.data_dir)
    sent = produce_mb(cloud.bootstrap, mem, 8, "m")
    grew_mem = dir_bytes(cloud.data_dir) - before
    produce_mb(cloud.bootstrap, disk, 8, "d")
    grew_disk = dir_bytes(cloud.data_dir) - before - grew_mem
    # 8 MB acknowledged (acks=all) into each: the persistent topic's are in RocksDB's
    # WAL, the memory topic's nowhere on disk.
    assert grew_disk > 7 * MB, grew_disk
    assert grew_mem < MB // 4, f"memory topic wrote {grew_mem} bytes"

    got = ck_read_all(cloud.bootstrap, mem)
    assert [r.value for r in got] == [m.value() for m in sent]
    assert [r.offset for r in got] == list(range(len(sent)))
    # ListOffsets by timestamp reads the memory log too.
    from confluent_kafka import TopicPartition
    from helpers import ck_consumer
    c = ck_consumer(cloud.bootstrap)
    try:
        (tp,) = c.offsets_for_times([TopicPartition(mem, 0, sent[10].timestamp()[1])], timeout=10)
        assert tp.offset <= 10 and got[tp.offset].timestamp >= sent[10].timestamp()[1]
    finally:
        c.close()

    n = len(sent)
    cloud.restart(kill=True)
    assert mode_of(cloud.bootstrap, mem) == "memory"
    lo, hi = ck_watermarks(cloud.bootstrap, mem)
    assert lo == hi and hi >= n, (lo, hi, n)  # empty, and above every earlier offset
    assert ck_read_all(cloud.bootstrap, mem) == []
    (m,) = ck_produce(cloud.bootstrap, mem, [{"value": b"after"}])
    assert m.offset() == hi
    assert [r.value for r in ck_read_all(cloud.bootstrap, mem)] == [b"after"]
    # The persistent topic kept everything.
    assert ck_watermarks(cloud.bootstrap, disk) == (0, n)


def test_hybrid_topic_keeps_what_it_acknowledged_across_a_kill(cloud, topic_name):
    """acks=all into a hybrid topic: answered without an fsync (unit test
    `a_hybrid_append_does_not_wait_for_the_fsync`), but written to the WAL first, so a
    SIGKILL of the cloud loses nothing; MQTT subscribers see it like any topic."""
    ck_create_topic(cloud.bootstrap, topic_name, config={"storage.mode": "hybrid"})
    assert mode_of(cloud.bootstrap, topic_name) == "hybrid"
    sent = ck_produce(cloud.bootstrap, topic_name,
                      [{"value": f"h{i}".encode()} for i in range(2000)],
                      **{"enable.idempotence": True})
    cloud.restart(kill=True)
    assert mode_of(cloud.bootstrap, topic_name) == "hybrid"
    got = ck_read_all(cloud.bootstrap, topic_name)
    assert [r.value for r in got] == [m.value() for m in sent]
    (m,) = ck_produce(cloud.bootstrap, topic_name, [{"value": b"after"}])
    assert m.offset() == len(sent)


def test_memory_topic_keeps_a_bounded_suffix(cloud, topic_name):
    """retention.bytes caps a memory partition: the oldest batches go as new ones come,
    and a reader from the beginning gets exactly the kept suffix."""
    ck_create_topic(cloud.bootstrap, topic_name,
                    config={"storage.mode": "memory", "retention.bytes": str(MB)})
    sent = []
    for chunk in range(6):
        sent += produce_mb(cloud.bootstrap, topic_name, 1, f"c{chunk}-")
    lo, hi = ck_watermarks(cloud.bootstrap, topic_name)
    assert hi == len(sent) and 0 < lo < hi, (lo, hi)
    got = ck_read_all(cloud.bootstrap, topic_name)
    assert [r.offset for r in got] == list(range(lo, hi))
    assert [r.value for r in got] == [m.value() for m in sent[lo:]]
    assert (hi - lo) * 4000 <= 2 * MB


def test_invalid_storage_mode_is_refused(cloud, topic_name):
    a = ck_admin(cloud.bootstrap)
    for mode in ("tiered", "disk"):
        with pytest.raises(KafkaException) as ei:
            a.create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=1,
                                      config={"storage.mode": mode})])[topic_name].result(timeout=20)
        assert ei.value.args[0].code() == KafkaError.INVALID_CONFIG, ei.value
        assert "storage.mode" in str(ei.value), ei.value
    assert topic_name not in a.list_topics(timeout=10).topics


@pytest.mark.cloud_config({"storage": {"default_mode": "memory"}})
def test_default_mode_memory_applies_to_auto_created_topics(mqtt_cloud, topic_name):
    """With storage.default_mode: memory, a topic first published over MQTT is a memory
    topic: both views serve it; a topic created with storage.mode=persistent stays one."""
    sub = Mqtt(mqtt_cloud.mqtt_port, 5)
    sub.subscribe("sensors/#", qos=1)
    pub = Mqtt(mqtt_cloud.mqtt_port, 4)
    for i in range(3):
        pub.publish("sensors/hall/t", f"{i}".encode(), qos=1)
    assert [m.payload for m in sub.expect(3)] == [b"0", b"1", b"2"]
    assert [r.value for r in ck_read_all(mqtt_cloud.bootstrap, "sensors.hall.t")] == [b"0", b"1", b"2"]
    assert mode_of(mqtt_cloud.bootstrap, "sensors.hall.t") == "memory"

    ck_create_topic(mqtt_cloud.bootstrap, topic_name, config={"storage.mode": "persistent"})
    assert mode_of(mqtt_cloud.bootstrap, topic_name) == "persistent"
    ck_produce(mqtt_cloud.bootstrap, topic_name, [{"value": b"kept"}])

    restart(mqtt_cloud)
    assert ck_watermarks(mqtt_cloud.bootstrap, "sensors.hall.t")[1] >= 3
    assert ck_read_all(mqtt_cloud.bootstrap, "sensors.hall.t") == []
    assert [r.value for r in ck_read_all(mqtt_cloud.bootstrap, topic_name)] == [b"kept"]
    # A subscriber after the restart gets new publishes (at offsets above the old ones).
    sub = Mqtt(mqtt_cloud.mqtt_port, 5)
    sub.subscribe("sensors/#", qos=1)
    Mqtt(mqtt_cloud.mqtt_port, 5).publish("sensors/hall/t", b"3", qos=1)
    assert [m.payload for m in sub.expect(1)] == [b"3"]
    wait_for(lambda: [r.value for r in ck_read_all(mqtt_cloud.bootstrap, "sensors.hall.t")] == [b"3"],
             10, what="the new publish readable over Kafka")


@pytest.mark.cloud_config({"mqtt": {"topic_modes": [{"filter": "live/#", "mode": "memory"}]}})
def test_mqtt_topic_modes_pick_the_mode_by_filter(mqtt_cloud):
    """mqtt.topic_modes: topics first published over MQTT under `live/#` are memory
    topics, every other one takes the default (persistent)."""
    pub = Mqtt(mqtt_cloud.mqtt_port, 5)
    pub.publish("live/cam1/frame", b"f1", qos=1)
    pub.publish("archive/cam1/frame", b"a1", qos=1)
    assert mode_of(mqtt_cloud.bootstrap, "live.cam1.frame") == "memory"
    assert mode_of(mqtt_cloud.bootstrap, "archive.cam1.frame") == "persistent"
    restart(mqtt_cloud)
    assert ck_read_all(mqtt_cloud.bootstrap, "live.cam1.frame") == []
    assert [r.value for r in ck_read_all(mqtt_cloud.bootstrap, "archive.cam1.frame")] == [b"a1"]


@pytest.mark.cloud_config({"storage": {"memory_total_bytes": 2 * MB}})
def test_memory_topics_share_one_budget(cloud, topic_name):
    """storage.memory_total_bytes bounds all memory partitions together: once it is
    reached, a partition that appends drops its own oldest batches, so two topics fed
    4 MB each keep at most the budget plus one batch each."""
    a, b = topic_name + ".a", topic_name + ".b"
    for t in (a, b):
        ck_create_topic(cloud.bootstrap, t, config={"storage.mode": "memory"})
    small = {"batch.size": 64 * 1024}  # batches of at most 64 KB
    sent = {}
    for t in (a, b):
        sent[t] = ck_produce(cloud.bootstrap, t, ({"value": os.urandom(4000)} for _ in range(1000)),
                             **small)
    kept = 0
    for t in (a, b):
        lo, hi = ck_watermarks(cloud.bootstrap, t)
        assert hi == 1000, (t, lo, hi)
        got = ck_read_all(cloud.bootstrap, t)
        assert [r.offset for r in got] == list(range(lo, hi)), t
        assert [r.value for r in got] == [m.value() for m in sent[t][lo:]], t
        kept += sum(len(r.value) for r in got)
    # Written last, b drops its own batches once the budget is full.
    assert ck_watermarks(cloud.bootstrap, b)[0] > 0
    assert kept <= 2 * MB + 2 * 64 * 1024, kept
