"""Compacted topics (`cleanup.policy=compact`): the cloud keeps at least the newest record
of every key, at its original offset, and removes older ones; tombstones (null values)
go once older than `delete.retention.ms`; the partition's last batch is never cleaned
(Kafka's active segment). Consumers see offset gaps, as on Kafka.

The cloud runs its retention/compaction pass every 200 ms here
(`storage.retention_check_interval_ms`); tests wait for the records a consumer reads to
reach the compacted state, never for a fixed time. Clients: confluent-kafka (produce,
admin, read), kafka-python and kcat (read).
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, ResourceType

from helpers import (ck_admin, ck_create_topic, ck_produce, ck_producer, ck_read_all,
                     kcat_consume, kp_read_all, wait_for)
from s3_fixtures import expect_invalid_config

FAST = {"storage": {"retention_check_interval_ms": 200}}


def produce_versions(bootstrap: str, topic: str, keys: int, versions: int, codec: str):
    """`versions` rounds, each one record per key (value `<key>=<round>`), each round
    flushed on its own (several batches); returns {key: (offset, value)} of the newest."""
    newest = {}
    for v in range(versions):
        recs = [{"key": f"k{k:02d}".encode(), "value": f"k{k:02d}={v}".encode(),
                 "headers": [("round", str(v).encode())]} for k in range(keys)]
        for r, m in zip(recs, ck_produce(bootstrap, topic, recs, codec=codec)):
            newest[r["key"]] = (m.offset(), r["value"])
    return newest


def compacted_view(recs) -> list[tuple[int, bytes, bytes]]:
    return [(r.offset, r.key, r.value) for r in recs]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("codec", ["none", "zstd", "lz4", "gzip"])
def test_a_compacted_topic_keeps_the_newest_value_of_each_key_at_its_offset(
        cloud_factory, topic_name, codec):
    """20 keys x 30 versions produced in 30 flushes, then one head record; the topic is
    created with cleanup.policy=compact (DescribeConfigs shows it). Reading from the
    beginning converges to exactly the newest record of each key at the offset it was
    delivered at, with its header, followed by the head record; the high watermark is
    unchanged. kafka-python and kcat read the same records across the gaps."""
    cloud = cloud_factory(FAST)
    ck_create_topic(cloud.bootstrap, topic_name, config={"cleanup.policy": "compact"})
    res = ConfigResource(ResourceType.TOPIC, topic_name)
    admin = ck_admin(cloud.bootstrap)
    described = admin.describe_configs([res])[res].result(timeout=20)
    assert described["cleanup.policy"].value == "compact"

    newest = produce_versions(cloud.bootstrap, topic_name, keys=20, versions=30, codec=codec)
    head = ck_produce(cloud.bootstrap, topic_name, [{"key": b"head", "value": b"h"}])[0]
    want = sorted((o, k, v) for k, (o, v) in newest.items()) + [(head.offset(), b"head", b"h")]

    def converged():
        got = ck_read_all(cloud.bootstrap, topic_name)
        return got if compacted_view(got) == want else None

    got = wait_for(converged, 60, interval=0.3, what=lambda: (
        f"compaction of {topic_name}: read "
        f"{len(ck_read_all(cloud.bootstrap, topic_name))} records, want {len(want)}"))
    rounds = {r.key: r.headers for r in got}
    assert rounds[b"k00"] == (("round", b"29"),), "headers kept through the rewrite"
    assert head.offset() == 20 * 30, "offsets assigned without gaps at produce"

    assert compacted_view(kp_read_all(cloud.bootstrap, topic_name)) == want, "kafka-python"
    kc = kcat_consume(cloud.bootstrap, topic_name)
    assert [(r.offset, r.key, r.value) for r in kc] == want, "kcat"
    cloud.assert_alive()


@pytest.mark.timeout(120)
def test_tombstones_remove_a_key_after_delete_retention_ms(cloud_factory, topic_name):
    """With delete.retention.ms=0 a tombstone (null value) removes its key entirely once
    compacted: of keys a, b, c with a and c then deleted, only b's newest value and the
    head record remain."""
    cloud = cloud_factory(FAST)
    ck_create_topic(cloud.bootstrap, topic_name,
                    config={"cleanup.policy": "compact", "delete.retention.ms": "0"})
    ck_produce(cloud.bootstrap, topic_name,
               [{"key": k, "value": b"1"} for k in (b"a", b"b", b"c")])
    ck_produce(cloud.bootstrap, topic_name, [{"key": b"b", "value": b"2"}])
    ck_produce(cloud.bootstrap, topic_name,
               [{"key": b"a", "value": None}, {"key": b"c", "value": None}])
    ck_produce(cloud.bootstrap, topic_name, [{"key": b"head", "value": b"h"}])

    def converged():
        got = [(r.key, r.value) for r in ck_read_all(cloud.bootstrap, topic_name)]
        return got == [(b"b", b"2"), (b"head", b"h")]

    wait_for(converged, 60, interval=0.3, what=lambda: (
        f"tombstones applied: {[(r.offset, r.key, r.value) for r in ck_read_all(cloud.bootstrap, topic_name)]}"))


@pytest.mark.timeout(60)
def test_compacted_topics_refuse_records_without_a_key(cloud_factory, topic_name):
    """A record without a key cannot be compacted: Produce answers INVALID_RECORD (as
    Kafka does) and nothing is stored; keyed records still go in."""
    cloud = cloud_factory(FAST)
    ck_create_topic(cloud.bootstrap, topic_name, config={"cleanup.policy": "compact"})
    p = ck_producer(cloud.bootstrap, **{"enable.idempotence": False, "retries": 0})
    errors = []
    p.produce(topic_name, value=b"no key", on_delivery=lambda e, m: errors.append(e))
    assert p.flush(30) == 0
    assert len(errors) == 1 and errors[0] is not None, errors
    assert errors[0].code() == KafkaError.INVALID_RECORD, errors[0]
    ok = ck_produce(cloud.bootstrap, topic_name, [{"key": b"k", "value": b"v"}])
    assert ok[0].offset() == 0, "the refused record took no offset"
    assert [(r.key, r.value) for r in ck_read_all(cloud.bootstrap, topic_name)] == [(b"k", b"v")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", [
    {"cleanup.policy": "compact", "storage.mode": "memory"},
    {"cleanup.policy": "compaction"},
    {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "1.5"},
    {"cleanup.policy": "compact", "delete.retention.ms": "-5"},
])
def test_bad_compaction_configs_are_refused(cloud_factory, topic_name, config):
    """INVALID_CONFIG, and no topic: compaction of a memory topic, an unknown policy, a
    dirty ratio outside 0..1, a negative delete.retention.ms."""
    cloud = cloud_factory(FAST)
    expect_invalid_config(ck_admin(cloud.bootstrap), topic_name, config)


@pytest.mark.timeout(60)
def test_compact_delete_applies_retention_too_and_compact_alone_does_not(
        cloud_factory, topic_name):
    """cleanup.policy=compact,delete with retention.ms=1 deletes whole old batches like a
    delete topic (only the head is left); compact alone with retention.ms=1 keeps every
    key's newest record."""
    cloud = cloud_factory(FAST)
    both, alone = topic_name + "-both", topic_name + "-alone"
    for t, policy in ((alone, "compact"), (both, "compact,delete")):
        ck_create_topic(cloud.bootstrap, t, config={"cleanup.policy": policy,
                                                    "retention.ms": "1"})
        for k in (b"x", b"y"):
            ck_produce(cloud.bootstrap, t, [{"key": k, "value": b"v"}])
        ck_produce(cloud.bootstrap, t, [{"key": b"head", "value": b"h"}])

    def left(topic, keys):
        return lambda: [r.key for r in ck_read_all(cloud.bootstrap, topic)] == keys

    wait_for(left(both, [b"head"]), 60, interval=0.3, what="retention on compact,delete")
    # A second round on `both`: the pass that deletes it comes after the whole pass that
    # deleted the first round, which ran over `alone` after its records were written.
    for k in (b"z", b"head2"):
        ck_produce(cloud.bootstrap, both, [{"key": k, "value": b"v"}])
    wait_for(left(both, [b"head2"]), 60, interval=0.3, what="second round of retention")
    assert [r.key for r in ck_read_all(cloud.bootstrap, alone)] == [b"x", b"y", b"head"]


def test_unknown_policy_message_names_the_key(cloud_factory, topic_name):
    """The refusal says which config and why."""
    cloud = cloud_factory(FAST)
    from confluent_kafka.admin import NewTopic
    admin = ck_admin(cloud.bootstrap)
    fs = admin.create_topics([NewTopic(topic_name, 1, 1, config={"cleanup.policy": "nope"})])
    with pytest.raises(KafkaException) as ei:
        fs[topic_name].result(timeout=30)
    assert "cleanup.policy" in str(ei.value), ei.value
