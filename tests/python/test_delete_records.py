"""DeleteRecords (`AdminClient.delete_records`, `kafka-delete-records`; Kafka Streams purges
its repartition topics with it): a partition's start moves forward to the given offset
(-1: the high watermark), durably; the records below are no longer served, also from the
middle of a batch; offsets continue where they were, also after every batch was deleted
and the cloud killed. Tiered topics refuse it (POLICY_VIOLATION).
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from helpers import ck_admin, ck_create_topic, ck_produce, ck_read_all, ck_watermarks, kp_read_all


def records(n: int, tag: str) -> list[dict]:
    return [{"key": f"{tag}{i}".encode(), "value": f"{tag}{i}".encode()} for i in range(n)]


def delete_records(admin, topic: str, offset: int, partition: int = 0):
    tp = TopicPartition(topic, partition, offset)
    return admin.delete_records([tp])[tp].result(timeout=20)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["persistent", "memory"])
def test_delete_records_moves_the_start_inside_a_batch_and_survives_a_kill(
        cloud_factory, topic_name, mode):
    """Three batches of 100 records; delete_records at 150 (inside the second batch)
    answers low watermark 150; watermarks are (150, 300); confluent-kafka and kafka-python
    from the beginning read offsets 150..299; a fetch below 150 is out of range (the
    consumer resets to the start). A persistent topic keeps the start across a SIGKILL,
    and after delete_records at the high watermark (-1) and another kill, the next
    produce gets offset 300."""
    cloud = cloud_factory({})
    ck_create_topic(cloud.bootstrap, topic_name, config={"storage.mode": mode})
    for b in range(3):
        ck_produce(cloud.bootstrap, topic_name, records(100, f"b{b}-"))
    admin = ck_admin(cloud.bootstrap)
    assert delete_records(admin, topic_name, 150).low_watermark == 150
    assert ck_watermarks(cloud.bootstrap, topic_name) == (150, 300)
    got = ck_read_all(cloud.bootstrap, topic_name)
    assert [r.offset for r in got] == list(range(150, 300))
    assert got[0].value == b"b1-50"
    assert [r.offset for r in kp_read_all(cloud.bootstrap, topic_name)] == list(range(150, 300))
    # Below the start: out of range, and auto.offset.reset=earliest goes to 150.
    assert [r.offset for r in ck_read_all(cloud.bootstrap, topic_name, start=20)][0] == 150
    # A lower offset than the start changes nothing.
    assert delete_records(admin, topic_name, 10).low_watermark == 150
    if mode == "memory":
        return

    cloud.restart(kill=True)
    assert ck_watermarks(cloud.bootstrap, topic_name) == (150, 300), "after kill -9"
    admin = ck_admin(cloud.bootstrap)
    assert delete_records(admin, topic_name, -1).low_watermark == 300
    cloud.restart(kill=True)
    assert ck_watermarks(cloud.bootstrap, topic_name) == (300, 300)
    m = ck_produce(cloud.bootstrap, topic_name, records(1, "after-"))[0]
    assert m.offset() == 300, "offsets continue after every batch was deleted"
    assert [r.value for r in ck_read_all(cloud.bootstrap, topic_name)] == [b"after-0"]


@pytest.mark.timeout(60)
def test_delete_records_past_the_high_watermark_is_refused(cloud_factory, topic_name):
    """Past the high watermark: OFFSET_OUT_OF_RANGE, and nothing moves. (An unknown
    partition never reaches the cloud: librdkafka refuses it from metadata.)"""
    cloud = cloud_factory({})
    ck_create_topic(cloud.bootstrap, topic_name)
    ck_produce(cloud.bootstrap, topic_name, records(10, "r"))
    admin = ck_admin(cloud.bootstrap)
    with pytest.raises(KafkaException) as ei:
        delete_records(admin, topic_name, 11)
    assert ei.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE, ei.value
    assert ck_watermarks(cloud.bootstrap, topic_name) == (0, 10)
