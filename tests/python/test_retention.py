"""Per-topic retention (retention.ms, retention.bytes) really deletes data."""

from __future__ import annotations

import time

import pytest

from helpers import ck_create_topic, ck_produce, ck_producer, ck_read_all, ck_watermarks, wait_for

FAST_RETENTION = {"storage": {"retention_check_interval_ms": 200}}


def produce_chunks(bootstrap, topic, chunks, timestamp=None):
    """Each chunk is flushed before the next, so chunk boundaries are batch boundaries.
    Returns the offsets of each chunk's first record."""
    p = ck_producer(bootstrap, **{"linger.ms": 20})
    firsts = []
    for chunk in chunks:
        got = []
        for v in chunk:
            kw = {"timestamp": timestamp} if timestamp is not None else {}
            p.produce(topic, value=v, on_delivery=lambda err, m: got.append((err, m)), **kw)
        assert p.flush(30) == 0
        assert all(err is None for err, _ in got), got
        firsts.append(min(m.offset() for _, m in got))
    return firsts


@pytest.mark.cloud_config(FAST_RETENTION)
def test_retention_ms_deletes_expired_records(cloud, topic_name):
    short, keep = topic_name + ".short", topic_name + ".keep"
    ck_create_topic(cloud.bootstrap, short, config={"retention.ms": "1000"})
    ck_create_topic(cloud.bootstrap, keep)  # default retention (7 days)
    chunks = [[f"old-{c}-{i}".encode() for i in range(20)] for c in range(5)]
    firsts = produce_chunks(cloud.bootstrap, short, chunks)
    produce_chunks(cloud.bootstrap, keep, chunks)
    n = 100
    last_chunk = firsts[-1]

    # Everything expires one second later; the checker runs every 200 ms. Kafka deletes
    # every expired batch (earliest == latest); this broker keeps the newest batch so the
    # log is never empty, so the bar is: all chunks but the last are gone.
    wait_for(lambda: ck_watermarks(cloud.bootstrap, short)[0] >= last_chunk, 20,
             what=lambda: f"earliest offset of {short} reaching {last_chunk} "
                          f"(watermarks {ck_watermarks(cloud.bootstrap, short)})")
    lo, hi = ck_watermarks(cloud.bootstrap, short)
    assert hi == n and last_chunk <= lo <= n
    left = ck_read_all(cloud.bootstrap, short)
    assert [r.offset for r in left] == list(range(lo, n)), "consumer from beginning got deleted records"

    # Retention is per topic: the other topic still has everything.
    assert ck_watermarks(cloud.bootstrap, keep) == (0, n)
    assert len(ck_read_all(cloud.bootstrap, keep)) == n

    # Offsets continue after deletion.
    (m,) = ck_produce(cloud.bootstrap, short, [{"value": b"fresh"}])
    assert m.offset() == n


@pytest.mark.cloud_config(FAST_RETENTION)
def test_retention_ms_uses_record_timestamps(cloud, topic_name):
    """Like Kafka, expiry is by the records' (CreateTime) timestamps: records stamped an
    hour ago go at once under retention.ms = 60 s, records stamped now stay."""
    ck_create_topic(cloud.bootstrap, topic_name, config={"retention.ms": "60000"})
    hour_ago = int(time.time() * 1000) - 3_600_000
    old = [[f"old-{c}-{i}".encode() for i in range(10)] for c in range(4)]
    produce_chunks(cloud.bootstrap, topic_name, old, timestamp=hour_ago)
    fresh = [f"fresh-{i}".encode() for i in range(10)]
    (first_fresh,) = produce_chunks(cloud.bootstrap, topic_name, [fresh])
    assert first_fresh == 40

    wait_for(lambda: ck_watermarks(cloud.bootstrap, topic_name)[0] == first_fresh, 20,
             what=lambda: f"old records deleted (watermarks {ck_watermarks(cloud.bootstrap, topic_name)})")
    assert [r.value for r in ck_read_all(cloud.bootstrap, topic_name)] == fresh


@pytest.mark.cloud_config(FAST_RETENTION)
def test_retention_bytes_keeps_the_newest_suffix(cloud, topic_name):
    limit = 4000
    ck_create_topic(cloud.bootstrap, topic_name, config={"retention.bytes": str(limit)})
    value_size = 200
    n = 60
    # One batch per record (a flush after each): ~12 kB in total.
    produce_chunks(cloud.bootstrap, topic_name,
                   [[f"{i:04d}".encode().ljust(value_size, b".")] for i in range(n)])

    # Trimmed, and settled: the earliest offset has not moved for over 5 sweep intervals
    # (the broker counts stored batch bytes, which we can only bound from here).
    seen = {"lo": None, "since": 0.0}

    def trimmed_and_settled():
        lo, hi = ck_watermarks(cloud.bootstrap, topic_name)
        now = time.monotonic()
        if lo != seen["lo"]:
            seen.update(lo=lo, since=now)
        return lo > 0 and (hi - lo) * value_size <= limit and now - seen["since"] > 1.0

    wait_for(trimmed_and_settled, 20, what=lambda: f"trim to {limit} bytes (watermarks "
                                                   f"{ck_watermarks(cloud.bootstrap, topic_name)})")
    lo, hi = ck_watermarks(cloud.bootstrap, topic_name)
    assert hi == n
    got = ck_read_all(cloud.bootstrap, topic_name)
    # What is left is the newest records, contiguous up to the end, and not nothing.
    assert got, "retention.bytes deleted everything"
    assert [r.offset for r in got] == list(range(lo, n))
    assert [r.value[:4] for r in got] == [f"{i:04d}".encode() for i in range(lo, n)]
    # It deleted only what it had to: keeping one more batch would exceed the limit by at
    # most one batch (record overhead included, a batch here is < 2 * value_size).
    assert (n - lo + 1) * (value_size * 2) > limit, f"deleted too much: kept {n - lo} records"
