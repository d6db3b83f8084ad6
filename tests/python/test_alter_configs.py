"""Changing a topic's configs after creation: IncrementalAlterConfigs (confluent-kafka's
`incremental_alter_configs`, what `kafka-configs --alter` sends) and AlterConfigs
(kafka-python's `alter_configs`: a full replacement of the explicit configs). A change is
checked as at creation, survives a kill -9, and applies to what the topic does next
(retention, compaction). `storage.mode`, `source` and `source.format` are fixed at
creation.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from helpers import ck_admin, ck_create_topic, ck_produce, ck_read_all, wait_for

FAST = {"storage": {"retention_check_interval_ms": 200}}
SOURCE_TOPIC = 1  # DescribeConfigs config_source: set on the topic
SOURCE_DEFAULT = 5


def describe(admin, topic: str) -> dict:
    res = ConfigResource(ResourceType.TOPIC, topic)
    return admin.describe_configs([res])[res].result(timeout=20)


def incremental(admin, topic: str, ops: list[tuple[str, str | None, AlterConfigOpType]],
                validate_only: bool = False):
    entries = [ConfigEntry(k, v, incremental_operation=op) for k, v, op in ops]
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
    return admin.incremental_alter_configs([res], validate_only=validate_only)[res].result(
        timeout=20)


def refused(admin, topic: str, ops, code=KafkaError.INVALID_CONFIG) -> str:
    with pytest.raises(KafkaException) as ei:
        incremental(admin, topic, ops)
    err = ei.value.args[0]
    assert err.code() == code, err
    return err.str()


@pytest.mark.timeout(120)
def test_incremental_alter_sets_deletes_and_survives_a_kill(cloud_factory, topic_name):
    """SET retention.ms and max.message.bytes: DescribeConfigs shows both as topic
    configs; validate_only changes nothing; DELETE puts max.message.bytes back to its
    default; after a SIGKILL and restart retention.ms is still the altered value."""
    cloud = cloud_factory(FAST)
    ck_create_topic(cloud.bootstrap, topic_name)
    admin = ck_admin(cloud.bootstrap)
    assert describe(admin, topic_name)["retention.ms"].source == SOURCE_DEFAULT

    incremental(admin, topic_name, [("retention.ms", "3600000", AlterConfigOpType.SET),
                                    ("max.message.bytes", "2000000", AlterConfigOpType.SET)])
    d = describe(admin, topic_name)
    assert (d["retention.ms"].value, d["retention.ms"].source) == ("3600000", SOURCE_TOPIC)
    assert d["max.message.bytes"].value == "2000000"

    incremental(admin, topic_name, [("retention.ms", "5", AlterConfigOpType.SET)],
                validate_only=True)
    assert describe(admin, topic_name)["retention.ms"].value == "3600000", "validate_only"

    incremental(admin, topic_name, [("max.message.bytes", None, AlterConfigOpType.DELETE)])
    d = describe(admin, topic_name)
    assert (d["max.message.bytes"].value, d["max.message.bytes"].source) == (
        "1048588", SOURCE_DEFAULT)

    cloud.restart(kill=True)
    admin = ck_admin(cloud.bootstrap)
    assert describe(admin, topic_name)["retention.ms"].value == "3600000", "after kill -9"


@pytest.mark.timeout(120)
def test_an_altered_retention_and_an_appended_compact_policy_take_effect(
        cloud_factory, topic_name):
    """A delete topic with three batches and default retention keeps them; retention.ms=1
    set afterwards makes the next pass delete all but the last batch. On a second topic,
    APPEND compact to cleanup.policy (delete -> delete,compact) and the next passes
    compact it: only the newest record of each key (and the head) remain."""
    cloud = cloud_factory(FAST)
    admin = ck_admin(cloud.bootstrap)
    ck_create_topic(cloud.bootstrap, topic_name)
    for v in (b"1", b"2", b"3"):
        ck_produce(cloud.bootstrap, topic_name, [{"key": b"k", "value": v}])
    incremental(admin, topic_name, [("retention.ms", "1", AlterConfigOpType.SET)])
    wait_for(lambda: [r.value for r in ck_read_all(cloud.bootstrap, topic_name)] == [b"3"],
             60, interval=0.3, what="retention.ms altered to 1 applied")

    other = topic_name + "-c"
    ck_create_topic(cloud.bootstrap, other)
    for v in (b"1", b"2"):
        ck_produce(cloud.bootstrap, other, [{"key": b"a", "value": v}, {"key": b"b", "value": v}])
    ck_produce(cloud.bootstrap, other, [{"key": b"head", "value": b"h"}])
    incremental(admin, other, [("cleanup.policy", "compact", AlterConfigOpType.APPEND)])
    assert describe(admin, other)["cleanup.policy"].value == "delete,compact"
    wait_for(lambda: [(r.key, r.value) for r in ck_read_all(cloud.bootstrap, other)]
             == [(b"a", b"2"), (b"b", b"2"), (b"head", b"h")],
             60, interval=0.3, what="compaction after APPEND compact")
    incremental(admin, other, [("cleanup.policy", "delete", AlterConfigOpType.SUBTRACT)])
    assert describe(admin, other)["cleanup.policy"].value == "compact"


@pytest.mark.timeout(60)
def test_bad_alterations_are_refused_and_change_nothing(cloud_factory, topic_name):
    """INVALID_CONFIG naming the key for: a new storage.mode, a bad retention.ms, an
    unknown config, APPEND to a non-list config, compaction of a memory topic; an unknown
    topic gets UNKNOWN_TOPIC_OR_PARTITION. The topic's configs are unchanged after all."""
    cloud = cloud_factory(FAST)
    admin = ck_admin(cloud.bootstrap)
    ck_create_topic(cloud.bootstrap, topic_name)
    mem = topic_name + "-m"
    ck_create_topic(cloud.bootstrap, mem, config={"storage.mode": "memory"})
    before = {k: v.value for k, v in describe(admin, topic_name).items()}
    assert "storage.mode" in refused(admin, topic_name,
                                     [("storage.mode", "memory", AlterConfigOpType.SET)])
    assert "retention.ms" in refused(admin, topic_name,
                                     [("retention.ms", "soon", AlterConfigOpType.SET)])
    assert "no.such.config" in refused(admin, topic_name,
                                       [("no.such.config", "1", AlterConfigOpType.SET)])
    assert "retention.ms" in refused(admin, topic_name,
                                     [("retention.ms", "5", AlterConfigOpType.APPEND)])
    assert "cleanup.policy" in refused(admin, mem,
                                       [("cleanup.policy", "compact", AlterConfigOpType.SET)])
    refused(admin, topic_name + "-none", [("retention.ms", "5", AlterConfigOpType.SET)],
            code=KafkaError.UNKNOWN_TOPIC_OR_PART)
    # The same storage.mode as now is not a change.
    incremental(admin, mem, [("storage.mode", "memory", AlterConfigOpType.SET)])
    assert {k: v.value for k, v in describe(admin, topic_name).items()} == before


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_alter_configs_replaces_the_explicit_configs(cloud_factory, topic_name):
    """AlterConfigs is a full replacement: a topic created with max.message.bytes and
    retention.ms, altered (confluent-kafka's alter_configs) with retention.ms alone, keeps
    the new retention.ms and has max.message.bytes back at its default; a memory topic
    keeps its storage.mode (fixed at creation) though the request leaves it out.
    kafka-python's alter_configs over AlterConfigs (incremental=False: it first fills in
    the topic's other explicit configs, as Kafka's tools do) and over
    IncrementalAlterConfigs both apply."""
    from kafka.admin import ConfigResource as KpResource, ConfigResourceType, KafkaAdminClient
    cloud = cloud_factory(FAST)
    ck_create_topic(cloud.bootstrap, topic_name,
                    config={"max.message.bytes": "2000000", "retention.ms": "1000"})
    mem = topic_name + "-m"
    ck_create_topic(cloud.bootstrap, mem, config={"storage.mode": "memory"})
    admin = ck_admin(cloud.bootstrap)
    res = [ConfigResource(ResourceType.TOPIC, topic_name, set_config={"retention.ms": "7200000"}),
           ConfigResource(ResourceType.TOPIC, mem, set_config={"retention.ms": "60000"})]
    for f in admin.alter_configs(res).values():
        f.result(timeout=20)
    d = describe(admin, topic_name)
    assert d["retention.ms"].value == "7200000"
    assert (d["max.message.bytes"].value, d["max.message.bytes"].source) == (
        "1048588", SOURCE_DEFAULT)
    m = describe(admin, mem)
    assert (m["storage.mode"].value, m["retention.ms"].value) == ("memory", "60000")

    kp = KafkaAdminClient(bootstrap_servers=cloud.bootstrap)
    try:
        for incremental, value in ((False, "1800000"), (True, "900000")):
            r = kp.alter_configs([KpResource(ConfigResourceType.TOPIC, mem,
                                             configs={"retention.ms": value})],
                                 incremental=incremental, raise_on_unknown=False)
            assert describe(admin, mem)["retention.ms"].value == value, (incremental, r)
            assert describe(admin, mem)["storage.mode"].value == "memory"
    finally:
        kp.close()


@pytest.mark.timeout(60)
def test_an_altered_retention_bytes_caps_a_memory_topic_from_the_next_append(
        cloud_factory, topic_name):
    """A memory topic enforces its byte cap on append: with ten 1 KB batches held,
    retention.bytes=2500 applies at the next produce, which leaves at most the newest
    2500 bytes of batches (and always the newest batch)."""
    cloud = cloud_factory(FAST)
    ck_create_topic(cloud.bootstrap, topic_name, config={"storage.mode": "memory"})
    for i in range(10):
        ck_produce(cloud.bootstrap, topic_name, [{"key": b"k", "value": b"%04d" % i * 250}])
    assert len(ck_read_all(cloud.bootstrap, topic_name)) == 10
    incremental(ck_admin(cloud.bootstrap), topic_name,
                [("retention.bytes", "2500", AlterConfigOpType.SET)])
    ck_produce(cloud.bootstrap, topic_name, [{"key": b"k", "value": b"last"}])
    left = ck_read_all(cloud.bootstrap, topic_name)
    assert 1 <= len(left) <= 3 and left[-1].value == b"last", [r.offset for r in left]
