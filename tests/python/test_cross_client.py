"""A batch compressed by one client is read by every other client.

Each (producer, codec) writes its own topic once (module fixture); then every consumer
reads every topic. The broker must hand back the producer's stored batches untouched,
which the raw-fetch test checks (codec bits and CRC as produced)."""

from __future__ import annotations

import pytest

import kwire
from helpers import (CODECS, assert_batches_codec, aio_produce, aio_read_all, ck_produce, ck_read_all,
                     kcat_consume, kcat_produce, kp_produce, kp_read_all, run_async)

PRODUCERS = ["kcat", "confluent", "kafka-python", "aiokafka"]
CONSUMERS = ["kcat", "confluent", "kafka-python", "aiokafka"]
N = 60


def expected_records(producer: str, codec: str):
    # ASCII only, so kcat's JSON output round-trips exactly.
    return [(f"k{i}".encode(), f"{producer}|{codec}|{i}|".encode() + b"payload-" * (i % 13),
             (("src", producer.encode()),)) for i in range(N)]


def produce(bootstrap: str, producer: str, codec: str, topic: str):
    recs = expected_records(producer, codec)
    if producer == "kcat":
        kcat_produce(bootstrap, topic, [f"{k.decode()}\t{v.decode()}" for k, v, _ in recs],
                     codec=codec, key_delim="\t", headers=["src=kcat"])
    elif producer == "confluent":
        ck_produce(bootstrap, topic, [{"key": k, "value": v, "headers": list(h)} for k, v, h in recs],
                   codec=codec, **{"linger.ms": 50})
    elif producer == "kafka-python":
        kp_produce(bootstrap, topic, [{"key": k, "value": v, "headers": list(h)} for k, v, h in recs],
                   codec=codec)
    elif producer == "aiokafka":
        run_async(aio_produce(bootstrap, topic,
                              [{"key": k, "value": v, "headers": list(h)} for k, v, h in recs],
                              codec=codec))
    else:
        raise AssertionError(producer)


def consume(bootstrap: str, consumer: str, topic: str):
    if consumer == "kcat":
        return kcat_consume(bootstrap, topic)
    if consumer == "confluent":
        return ck_read_all(bootstrap, topic)
    if consumer == "kafka-python":
        return kp_read_all(bootstrap, topic)
    if consumer == "aiokafka":
        return run_async(aio_read_all(bootstrap, topic))
    raise AssertionError(consumer)


def topic_for(producer, codec):
    return f"x.{producer}.{codec}"


@pytest.fixture(scope="module")
def produced(module_cloud):
    """Produces every (producer, codec) topic once; failures are reported per combination."""
    errors = {}
    for producer in PRODUCERS:
        for codec in CODECS:
            try:
                produce(module_cloud.bootstrap, producer, codec, topic_for(producer, codec))
            except Exception as e:  # reported by the tests that need this topic
                errors[(producer, codec)] = e
    return errors


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("producer", PRODUCERS)
def test_stored_batches_are_the_producers(module_cloud, produced, producer, codec):
    assert (producer, codec) not in produced, f"producing failed: {produced.get((producer, codec))!r}"
    batches = kwire.fetch_all_batches(module_cloud.host, module_cloud.port, topic_for(producer, codec))
    assert_batches_codec(batches, codec)
    assert all(b.magic == 2 and b.crc_ok() for b in batches)
    assert sum(b.record_count for b in batches) == N
    assert max(b.record_count for b in batches) > 1, "no multi-record batch was produced"


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("producer", PRODUCERS)
def test_read_by_every_client(module_cloud, produced, producer, codec, consumer):
    assert (producer, codec) not in produced, f"producing failed: {produced.get((producer, codec))!r}"
    got = consume(module_cloud.bootstrap, consumer, topic_for(producer, codec))
    want = expected_records(producer, codec)
    assert [r.offset for r in got] == list(range(N))
    assert [(r.key, r.value) for r in got] == [(k, v) for k, v, _ in want]
    assert [tuple(r.headers) for r in got] == [h for _, _, h in want]
