"""Tiered topics: a topic created with topic config `storage.mode=tiered` keeps its recent
batches local (RocksDB) and moves older ones to object storage, where they stay readable
at their offsets.

Cloud config `storage.tiered`: `target` (s3://bucket/prefix; null = tiered refused),
`local_bytes` (per partition; topic config `local.retention.bytes` overrides, -2 = use
this), `segment_bytes`, `check_interval_ms`; the `s3` section gives endpoint and
credentials. Every check interval, while a partition's local bytes exceed
local_bytes + segment_bytes, its oldest batches (about segment_bytes of whole stored
batches, at least one) are uploaded as one object
`PREFIX/<topic>-<topic id>/<partition>/<base offset, 20 digits>.log` holding the stored
record batches back to back (a Kafka log segment), recorded in the store, and their local
copies deleted. Fetch serves every offset from the first segment's base (0) to the high
watermark, local or from S3; ListOffsets earliest stays 0; a SIGKILL loses nothing.

S3 is a `moto_server` started by this module on 127.0.0.1 (a free port), one fresh
bucket per test. Clients: confluent-kafka, kafka-python, kcat; the uploaded objects are
read with boto3 and decoded with kafka-python's record-batch parser (CRC checked).
"""

from __future__ import annotations

import os
import queue
import re
import struct
import time
from dataclasses import dataclass, field

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType

from s3_fixtures import (REGION, MotoServer, bucket, expect_invalid_config,  # noqa: F401
                         moto, poll_records, s3)
from mqtt_fixtures import Mqtt, props, start_mqtt_cloud
from paho.mqtt.packettypes import PacketTypes
from helpers import (Rec, ck_admin, ck_consumer, ck_create_topic, ck_produce, ck_read_all,
                     ck_watermarks, kcat, kp_read_all, wait_for)

PREFIX = "tier/edge-a"          # two levels, so prefix handling is exercised
LOCAL_BYTES = 200_000
SEGMENT_BYTES = 100_000
CHECK_MS = 200
TIER_TIMEOUT_S = 30.0
# Quiet period that means "tiering has stopped": many check intervals without a new object.
SETTLE_S = 10 * CHECK_MS / 1000
RECORD_VALUE_BYTES = 1024
# Producer batches well under segment_bytes, so a segment holds several batches.
PRODUCER_CONF = {"batch.size": 16384}
SRC_HEADER = ("src", b"tiered-test")


# ---- moto (S3) -----------------------------------------------------------------------


def tier_overrides(moto: MotoServer, bucket: str | None, **tiered) -> dict:
    """Cloud config: `s3` pointing at moto, `storage.tiered` with small sizes and
    `target` = s3://bucket/PREFIX (no target at all when `bucket` is None)."""
    t = {"local_bytes": LOCAL_BYTES, "segment_bytes": SEGMENT_BYTES,
         "check_interval_ms": CHECK_MS}
    if bucket is not None:
        t["target"] = f"s3://{bucket}/{PREFIX}"
    t.update(tiered)
    return {"s3": {"endpoint": moto.endpoint, "region": REGION, "access_key_id": "testing",
                   "secret_access_key": "testing", "allow_http": True},
            "storage": {"tiered": t}}


# ---- producing and comparing records ---------------------------------------------------


def make_records(n: int, tag: str, partitions: int | None = None, ts_base: int | None = None):
    """n records of RECORD_VALUE_BYTES (incompressible, numbered) with distinct keys and
    two headers; record i goes to partition i % partitions when `partitions` is given,
    and carries timestamp ts_base + i when `ts_base` is given."""
    out = []
    for i in range(n):
        head = f"{tag}{i:05d}|".encode()
        r = {"key": f"key-{tag}-{i:05d}".encode(),
             "value": head + os.urandom(RECORD_VALUE_BYTES - len(head)),
             "headers": [("idx", str(i).encode()), SRC_HEADER]}
        if partitions is not None:
            r["partition"] = i % partitions
        if ts_base is not None:
            r["timestamp"] = ts_base + i
        out.append(r)
    return out


def produce(bootstrap: str, topic: str, records: list[dict], flushes: int,
            expected: dict[int, list[Rec]] | None = None) -> dict[int, list[Rec]]:
    """Produces `records` in `flushes` separate ck_produce calls (acks=all, each flushed)
    and returns, per partition, the expected records indexed by offset (appended to
    `expected` when given). Asserts each partition's offsets continue without a gap."""
    expected = {} if expected is None else expected
    step = -(-len(records) // flushes)
    for start in range(0, len(records), step):
        chunk = records[start:start + step]
        delivered = ck_produce(bootstrap, topic, chunk, **PRODUCER_CONF)
        for r, m in zip(chunk, delivered):
            part = expected.setdefault(m.partition(), [])
            assert m.offset() == len(part), (
                f"{topic}[{m.partition()}]: record {r['key']!r} delivered at offset "
                f"{m.offset()}, expected {len(part)} (offsets must continue)")
            assert m.key() == r["key"], (m.key(), r["key"])
            part.append(Rec(m.partition(), m.offset(), r["key"], r["value"],
                            tuple(r["headers"]), m.timestamp()[1]))
    return expected


def payload(recs) -> int:
    """Key + value + header bytes: less than what those records take stored."""
    return sum(len(r.key or b"") + len(r.value or b"")
               + sum(len(k) + len(v) for k, v in r.headers) for r in recs)


def brief(r: Rec | None) -> str:
    if r is None:
        return "nothing"
    return (f"(p{r.partition} @{r.offset} key={r.key!r} value={len(r.value or b'')}B "
            f"{(r.value or b'')[:12]!r}... headers={r.headers} ts={r.timestamp})")


def assert_records(got: list[Rec], want: list[Rec], what: str):
    """got == want, reported by the first difference (not a diff of megabytes)."""
    if got == want:
        return
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            raise AssertionError(
                f"{what}: {len(got)} records, expected {len(want)}; first difference at "
                f"index {i}: got {brief(g)}, expected {brief(w)}")
    raise AssertionError(
        f"{what}: {len(got)} records, expected {len(want)}; equal up to index "
        f"{min(len(got), len(want))}; next got {brief(got[len(want)] if len(got) > len(want) else None)}, "
        f"next expected {brief(want[len(got)] if len(want) > len(got) else None)}")


def per_partition(recs: list[Rec]) -> dict[int, list[Rec]]:
    out: dict[int, list[Rec]] = {}
    for r in recs:
        out.setdefault(r.partition, []).append(r)
    return out


def mode_of(bootstrap: str, topic: str) -> str:
    a = ck_admin(bootstrap)  # kept alive until the answer: a dropped client cancels it
    (fut,) = a.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return fut.result(timeout=20)["storage.mode"].value


# ---- the uploaded segments ---------------------------------------------------------------


@dataclass
class Segment:
    key: str
    topic_dir: str         # "<topic>-<topic id>"
    partition: int
    base: int              # from the name; also the first batch's baseOffset
    end: int               # next offset after the last record
    size: int
    batch_sizes: list[int] = field(default_factory=list)
    records: list[Rec] = field(default_factory=list)


def parse_segment(key: str, topic_dir: str, partition: int, base: int, body: bytes) -> Segment:
    """Decodes an object as record batches back to back (v2, CRC checked): the batches
    tile the object exactly, the first one's baseOffset is the name's, and offsets run on
    without a gap inside and across batches."""
    from kafka.record.default_records import DefaultRecordBatch

    assert len(body) >= 12, f"{key}: {len(body)} bytes, not even a batch header"
    (first,) = struct.unpack_from(">q", body, 0)
    assert first == base, f"{key}: starts with baseOffset {first}, its name says {base}"
    seg = Segment(key, topic_dir, partition, base, base, len(body))
    pos = 0
    while pos < len(body):
        assert len(body) - pos >= 17, f"{key}: {len(body) - pos} trailing bytes at {pos}"
        b_off, b_len = struct.unpack_from(">qi", body, pos)
        size = 12 + b_len
        assert b_len > 0 and pos + size <= len(body), (
            f"{key}: batch at byte {pos} claims {b_len} bytes, object has {len(body)}")
        magic = body[pos + 16]
        assert magic == 2, f"{key}: batch at byte {pos} has magic {magic}"
        batch = DefaultRecordBatch(memoryview(body)[pos:pos + size])
        assert batch.validate_crc(), f"{key}: batch at byte {pos} (offset {b_off}): bad CRC"
        assert not batch.is_control_batch, f"{key}: control batch at {b_off}"
        assert b_off == seg.end, (
            f"{key}: batch at byte {pos} has baseOffset {b_off}, expected {seg.end}")
        n = 0
        for r in batch:
            assert r.offset == b_off + n, f"{key}: record offset {r.offset}, expected {b_off + n}"
            seg.records.append(Rec(partition, r.offset,
                                   None if r.key is None else bytes(r.key),
                                   None if r.value is None else bytes(r.value),
                                   tuple((k, bytes(v)) for k, v in r.headers), r.timestamp))
            n += 1
        assert n == batch.records_count == batch.last_offset_delta + 1, (
            f"{key}: batch {b_off}: {n} records, count {batch.records_count}, "
            f"lastOffsetDelta {batch.last_offset_delta}")
        seg.end = b_off + n
        seg.batch_sizes.append(size)
        pos += size
    return seg


class Tier:
    """The objects a topic uploaded under s3://bucket/PREFIX/<topic>-; each one is
    downloaded and decoded once (keyed by its ETag)."""

    def __init__(self, s3, bucket: str, topic: str):
        self.s3, self.bucket, self.topic = s3, bucket, topic
        self.prefix = f"{PREFIX}/{topic}-"
        self.key_re = re.compile(
            rf"^{re.escape(PREFIX)}/({re.escape(topic)}-[^/]+)/(\d+)/(\d{{20}})\.log$")
        self._parsed: dict[tuple[str, str], Segment] = {}

    def objects(self) -> list[tuple[str, int, str]]:
        """(key, size, etag) of the objects under the topic's prefix, key order."""
        out = []
        kw = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            page = self.s3.list_objects_v2(**kw)
            out += [(o["Key"], o["Size"], o["ETag"]) for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            kw["ContinuationToken"] = page["NextContinuationToken"]

    def keys(self) -> list[str]:
        return [k for k, _, _ in self.objects()]

    def segments(self) -> dict[int, list[Segment]]:
        """Per partition, the segments by base offset. Asserts every object under the
        topic's prefix is named PREFIX/<topic>-<id>/<partition>/<20 digits>.log, one
        <topic>-<id> directory in all, and decodes as batches."""
        by_part: dict[int, list[Segment]] = {}
        dirs = set()
        for key, size, etag in self.objects():
            m = self.key_re.match(key)
            assert m, (f"object {key} is not {PREFIX}/{self.topic}-<topic id>/<partition>/"
                       f"<20-digit base offset>.log")
            topic_dir, part, base = m.group(1), int(m.group(2)), int(m.group(3))
            dirs.add(topic_dir)
            seg = self._parsed.get((key, etag))
            if seg is None:
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                assert len(body) == size, f"{key}: listed {size} bytes, read {len(body)}"
                seg = parse_segment(key, topic_dir, part, base, body)
                self._parsed[(key, etag)] = seg
            by_part.setdefault(part, []).append(seg)
        assert len(dirs) <= 1, f"segments of {self.topic} under several directories: {dirs}"
        for segs in by_part.values():
            segs.sort(key=lambda s: s.base)
        return by_part


def chain_end(segs: list[Segment], partition: int) -> int:
    """Asserts the partition's segments start at offset 0 and each begins where the one
    before ended; returns the offset after the last tiered record."""
    assert segs, f"partition {partition}: no segment uploaded yet"
    assert segs[0].base == 0, (f"partition {partition}: first segment {segs[0].key} starts at "
                               f"{segs[0].base}, not 0")
    for a, b in zip(segs, segs[1:]):
        assert b.base == a.end, (f"partition {partition}: {a.key} ends before offset {a.end} "
                                 f"but the next segment {b.key} starts at {b.base}")
    return segs[-1].end


def wait_tiered(tier: Tier, expected: dict[int, list[Rec]], local_limit: int,
                timeout: float = TIER_TIMEOUT_S) -> dict[int, list[Segment]]:
    """Waits until, on every partition in `expected`, the segments form a chain from
    offset 0 and the records not in it hold at most `local_limit` payload bytes (their
    stored size is larger than their payload, so a cloud keeping at most local_limit
    stored bytes local gets there)."""
    state: dict[int, tuple] = {}

    def cond():
        segs = tier.segments()
        done = True
        for p, want in expected.items():
            end = chain_end(segs.get(p, []), p)
            left = payload(want[end:])
            state[p] = (len(segs[p]), end, left)
            done = done and left <= local_limit
        return segs if done else None

    return wait_for(cond, timeout, interval=0.2, what=lambda: (
        f"tiering of {tier.topic}: per partition (segments, tiered up to offset, payload "
        f"bytes not tiered) {state}; at most {local_limit} may stay local"))


def wait_settled(tier: Tier, quiet: float = SETTLE_S, timeout: float = TIER_TIMEOUT_S):
    """Waits until no object is added under the topic's prefix for `quiet` seconds
    (tiering stopped: every check interval in that time found nothing to move)."""
    last = tier.keys()
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, (
            f"{tier.topic}: objects still being added after {timeout}s ({len(last)} now)")
        time.sleep(0.1)  # polling interval of the listing
        now = tier.keys()
        if now != last:
            last, since = now, time.monotonic()
    return tier.segments()


def verify_segments(segs: dict[int, list[Segment]], expected: dict[int, list[Rec]],
                    segment_bytes: int) -> dict[int, int]:
    """Every partition's segments: a chain from 0 holding exactly the produced records at
    their offsets (key, value, headers, timestamp), each object about segment_bytes of
    whole batches (within one batch of it). Returns the tiered end offset per partition."""
    assert set(segs) <= set(expected), f"segments for partitions {sorted(segs)}"
    ends = {}
    for p, want in expected.items():
        ps = segs.get(p, [])
        ends[p] = end = chain_end(ps, p)
        assert end <= len(want), f"partition {p}: tiered up to {end}, only {len(want)} produced"
        assert_records([r for s in ps for r in s.records], want[:end],
                       f"records in the segments of partition {p}")
        biggest = max(b for s in ps for b in s.batch_sizes)
        for s in ps:
            assert s.batch_sizes, s.key
            assert segment_bytes - biggest < s.size <= segment_bytes + biggest, (
                f"{s.key}: {s.size} bytes in {len(s.batch_sizes)} batches, not about "
                f"segment_bytes {segment_bytes} (largest batch {biggest})")
    return ends


def estimated_local_bytes(segs: list[Segment], produced: int) -> float:
    """Stored bytes of the records after the segments, estimated from what the same-sized
    records take in the segments."""
    tiered_recs = segs[-1].end
    per_record = sum(s.size for s in segs) / tiered_recs
    return (produced - tiered_recs) * per_record


def tier_and_check(tier: Tier, expected: dict[int, list[Rec]], local_bytes: int):
    """wait_tiered, wait_settled, then verify_segments plus the spec's sizes: per
    partition the objects hold at least produced payload - local - segment bytes, and the
    local part keeps at least local_bytes minus a segment (recent data stays local).
    Returns (segments, tiered end offset per partition)."""
    wait_tiered(tier, expected, local_bytes + SEGMENT_BYTES)
    segs = wait_settled(tier)
    ends = verify_segments(segs, expected, SEGMENT_BYTES)
    for p, want in expected.items():
        tiered = sum(s.size for s in segs[p])
        assert tiered >= payload(want) - local_bytes - SEGMENT_BYTES, (p, tiered, payload(want))
        local = estimated_local_bytes(segs[p], len(want))
        assert local >= local_bytes - SEGMENT_BYTES, (
            f"partition {p}: only about {local:.0f} bytes left local (records {ends[p]}.."
            f"{len(want) - 1}); local_bytes {local_bytes} should stay local")
    return segs, ends


def create_tiered(bootstrap: str, topic: str, partitions: int = 1, **config):
    ck_create_topic(bootstrap, topic, partitions=partitions,
                    config={"storage.mode": "tiered", **config})


def bucket_keys(s3, bucket: str) -> list[str]:
    out = []
    kw = {"Bucket": bucket}
    while True:
        page = s3.list_objects_v2(**kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return out
        kw["ContinuationToken"] = page["NextContinuationToken"]


# ---- tests ---------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_old_batches_move_to_s3_and_a_reader_from_zero_gets_every_record(
        cloud_factory, moto, s3, bucket, topic_name):
    """3000 records of 1 KB (distinct keys, two headers) produced with acks=all in six
    flushes to a one-partition tiered topic (DescribeConfigs says storage.mode tiered).
    The bucket gets objects PREFIX/<topic>-<id>/0/<20-digit base>.log (nothing outside
    PREFIX/), bases 0, then each where the previous ended; each object is whole v2
    batches back to back (CRC valid, first 8 bytes = the base in its name) holding
    exactly the produced records at their offsets, and is about segment_bytes (within a
    batch). Tiering goes until at most local_bytes + segment_bytes of payload is left
    local, and stops with at least local_bytes - segment_bytes local. Watermarks stay
    (0, 3000); a confluent-kafka consumer assigned at offset 0 reads offsets 0..2999 with
    keys, values, headers and timestamps as produced."""
    cloud = cloud_factory(tier_overrides(moto, bucket))
    create_tiered(cloud.bootstrap, topic_name)
    assert mode_of(cloud.bootstrap, topic_name) == "tiered"
    n = 3000
    expected = produce(cloud.bootstrap, topic_name, make_records(n, "a"), flushes=6)
    assert list(expected) == [0] and len(expected[0]) == n

    tier = Tier(s3, bucket, topic_name)
    segs, ends = tier_and_check(tier, expected, LOCAL_BYTES)
    assert len(segs[0]) >= 10, f"{len(segs[0])} segments for ~3 MB at {SEGMENT_BYTES} each"
    assert all(s.key.endswith(f"/0/{s.base:020d}.log") for s in segs[0])
    assert segs[0][0].key.endswith("/0/00000000000000000000.log"), segs[0][0].key
    outside = [k for k in bucket_keys(s3, bucket) if not k.startswith(PREFIX + "/")]
    assert outside == [], f"objects outside {PREFIX}/: {outside[:10]}"

    assert ck_watermarks(cloud.bootstrap, topic_name) == (0, n)
    got = ck_read_all(cloud.bootstrap, topic_name, start=0, timeout=90)
    assert_records(got, expected[0], "confluent-kafka from offset 0")
    cloud.assert_alive()


@pytest.mark.timeout(240)
def test_kafka_python_and_kcat_read_tiered_and_local_offsets(
        cloud_factory, moto, s3, bucket, topic_name):
    """A second and third client implementation over the same tiered topic (3000 records,
    tiered as in the first test): kafka-python (CRC checking on) from the beginning gets
    every record as produced; kcat from `beginning` gets every offset with its key, value
    size and headers. kafka-python seeking to single offsets - 0, inside the first batch,
    the last of the first segment, the first of the second, inside a middle segment, the
    last tiered, the first local, the last - gets the records from exactly there."""
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    cloud = cloud_factory(tier_overrides(moto, bucket))
    create_tiered(cloud.bootstrap, topic_name)
    n = 3000
    expected = produce(cloud.bootstrap, topic_name, make_records(n, "b"), flushes=5)
    segs, ends = tier_and_check(Tier(s3, bucket, topic_name), expected, LOCAL_BYTES)
    want = expected[0]
    end = ends[0]
    assert 0 < end < n and len(segs[0]) >= 2, (end, len(segs[0]))

    got = kp_read_all(cloud.bootstrap, topic_name, timeout=90)
    assert_records(got, want, "kafka-python from the beginning")

    out = kcat(["-b", cloud.bootstrap, "-C", "-t", topic_name, "-p", "0", "-o", "beginning",
                "-e", "-q", "-f", "%o\\t%k\\t%S\\t%h\\n"], timeout=90).stdout.decode()
    rows = [line.split("\t") for line in out.splitlines() if line]
    expect_rows = [[str(r.offset), r.key.decode(), str(len(r.value)),
                    ",".join(f"{k}={v.decode()}" for k, v in r.headers)] for r in want]
    if rows != expect_rows:
        diff = next((i for i, (a, b) in enumerate(zip(rows, expect_rows)) if a != b),
                    min(len(rows), len(expect_rows)))
        raise AssertionError(f"kcat: {len(rows)} rows, expected {len(expect_rows)}; first "
                             f"difference at {diff}: {rows[diff:diff + 1]} vs "
                             f"{expect_rows[diff:diff + 1]}")

    s0, s1 = segs[0][0], segs[0][1]
    mid = segs[0][len(segs[0]) // 2]
    starts = sorted({0, 1, s0.end - 1, s1.base, mid.base + (mid.end - mid.base) // 2,
                     end - 1, end, n - 1})
    c = KafkaConsumer(bootstrap_servers=cloud.bootstrap, group_id=None,
                      enable_auto_commit=False, request_timeout_ms=20000)
    try:
        tp = KTP(topic_name, 0)
        c.assign([tp])
        for off in starts:
            c.seek(tp, off)
            recs: list[Rec] = []
            deadline = time.monotonic() + 30
            wanted = want[off:off + 3]
            while len(recs) < len(wanted):
                assert time.monotonic() < deadline, (
                    f"kafka-python at offset {off}: {len(recs)} records in 30 s")
                for msgs in c.poll(timeout_ms=200).values():
                    recs += [Rec(m.partition, m.offset, m.key, m.value,
                                 tuple((k, v) for k, v in (m.headers or [])), m.timestamp)
                             for m in msgs]
            assert_records(recs[:len(wanted)], wanted, f"kafka-python seeking to {off}")
    finally:
        c.close()


@pytest.mark.timeout(300)
def test_tiered_segments_and_group_offsets_survive_a_kill(
        cloud_factory, moto, s3, bucket, topic_name):
    """3000 records tiered as in the first test; a group reads 1500 and commits offset
    1500; the cloud is SIGKILLed and started again on the same data dir and config. A
    reader from offset 0 gets the 3000 records exactly once each, in order, as produced;
    every object uploaded before the kill is still there, unchanged. 100 more records are
    acknowledged at offsets 3000..3099 and read after the others; the segments still form
    a chain from 0 holding exactly the produced records; the group resumes at 1500 and
    reads 1500..3099."""
    cloud = cloud_factory(tier_overrides(moto, bucket))
    create_tiered(cloud.bootstrap, topic_name)
    n = 3000
    expected = produce(cloud.bootstrap, topic_name, make_records(n, "c"), flushes=6)
    tier = Tier(s3, bucket, topic_name)
    segs, ends = tier_and_check(tier, expected, LOCAL_BYTES)
    assert ends[0] > 1500, f"tiered up to {ends[0]}: the committed offset should be in S3"
    before = {k: etag for k, _, etag in tier.objects()}

    group = f"g.{topic_name}"
    c = ck_consumer(cloud.bootstrap, group, **{"enable.partition.eof": False})
    try:
        c.subscribe([topic_name])
        head = poll_records(c, 1500, 90, "the group's first 1500 records")
        assert_records(head, expected[0][:1500], "group before the kill")
        c.commit(offsets=[TopicPartition(topic_name, 0, 1500)], asynchronous=False)
        (tp,) = c.committed([TopicPartition(topic_name, 0)], timeout=10)
        assert tp.offset == 1500, tp
    finally:
        c.close()

    cloud.kill()
    cloud.start()

    assert ck_watermarks(cloud.bootstrap, topic_name) == (0, n)
    got = ck_read_all(cloud.bootstrap, topic_name, start=0, timeout=90)
    assert_records(got, expected[0], "reader from 0 after the restart")
    after = {k: etag for k, _, etag in tier.objects()}
    assert {k: after.get(k) for k in before} == before, "objects lost or rewritten"

    more = make_records(100, "c-after")
    produce(cloud.bootstrap, topic_name, more, flushes=1, expected=expected)
    assert len(expected[0]) == n + 100  # produce() asserted offsets 3000..3099
    got = ck_read_all(cloud.bootstrap, topic_name, start=0, timeout=90)
    assert_records(got, expected[0], "reader from 0 after the restart and 100 more")
    verify_segments(wait_settled(tier), expected, SEGMENT_BYTES)

    c = ck_consumer(cloud.bootstrap, group, **{"enable.partition.eof": False})
    try:
        c.subscribe([topic_name])
        rest = poll_records(c, n + 100 - 1500, 90, "the group resuming after the restart")
        assert_records(rest, expected[0][1500:], "group after the restart")
    finally:
        c.close()


@pytest.mark.timeout(240)
def test_two_partitions_tier_separately(cloud_factory, moto, s3, bucket, topic_name):
    """A two-partition tiered topic, record i produced to partition i % 2 (1500 of 1 KB
    each): each partition gets its own chain of segments from offset 0 under
    <topic>-<id>/0/ and <topic>-<id>/1/ (one topic directory), each holding exactly that
    partition's records, each partition tiered down to local_bytes + segment_bytes; a
    reader of both partitions from offset 0 gets every record of each partition in
    order."""
    cloud = cloud_factory(tier_overrides(moto, bucket))
    create_tiered(cloud.bootstrap, topic_name, partitions=2)
    n = 3000
    expected = produce(cloud.bootstrap, topic_name, make_records(n, "d", partitions=2),
                       flushes=6)
    assert sorted(expected) == [0, 1] and [len(expected[p]) for p in (0, 1)] == [1500, 1500]
    tier = Tier(s3, bucket, topic_name)
    segs, ends = tier_and_check(tier, expected, LOCAL_BYTES)
    assert sorted(segs) == [0, 1], sorted(segs)
    dirs = {s.topic_dir for p in (0, 1) for s in segs[p]}
    assert len(dirs) == 1, dirs
    for p in (0, 1):
        assert all(f"/{p}/" in s.key for s in segs[p]), [s.key for s in segs[p]]
        assert all(r.key.startswith(b"key-d-") and int(r.key[6:]) % 2 == p
                   for s in segs[p] for r in s.records), f"partition {p} holds other records"

    got = per_partition(ck_read_all(cloud.bootstrap, topic_name, start=0, timeout=90))
    assert sorted(got) == [0, 1], sorted(got)
    for p in (0, 1):
        assert_records(got[p], expected[p], f"partition {p} from offset 0")


@pytest.mark.timeout(240)
def test_tiered_refused_without_target_and_local_retention_bytes_checked(
        cloud_factory, moto, s3, bucket, topic_name):
    """A cloud with storage.tiered but no target refuses CreateTopics storage.mode=tiered
    with INVALID_CONFIG (nothing created) and keeps serving (a persistent topic is created,
    produced to and read). With a target: local.retention.bytes -5, -3 and `abc` are
    refused with INVALID_CONFIG; -2 and -1 are accepted; 0 is accepted and then everything
    but at most one segment's worth moves to S3 (the records left local hold at most
    segment_bytes of payload), every record staying readable from offset 0."""
    bare = cloud_factory(tier_overrides(moto, None), name="no-target")
    a = ck_admin(bare.bootstrap)
    expect_invalid_config(a, topic_name + ".refused", {"storage.mode": "tiered"})
    bare.assert_alive()
    plain = topic_name + ".plain"
    ck_create_topic(bare.bootstrap, plain, config={"storage.mode": "persistent"})
    ck_produce(bare.bootstrap, plain, [{"value": b"still serving"}])
    assert [r.value for r in ck_read_all(bare.bootstrap, plain)] == [b"still serving"]
    bare.stop()

    cloud = cloud_factory(tier_overrides(moto, bucket), name="with-target")
    a = ck_admin(cloud.bootstrap)
    for bad in ("-5", "-3", "abc"):
        expect_invalid_config(a, f"{topic_name}.bad{bad}",
                              {"storage.mode": "tiered", "local.retention.bytes": bad})
    for ok in ("-2", "-1"):
        create_tiered(cloud.bootstrap, f"{topic_name}.ok{ok}", **{"local.retention.bytes": ok})
    cloud.assert_alive()

    create_tiered(cloud.bootstrap, topic_name, **{"local.retention.bytes": "0"})
    n = 1000
    expected = produce(cloud.bootstrap, topic_name, make_records(n, "e"), flushes=4)
    tier = Tier(s3, bucket, topic_name)
    segs, ends = tier_and_check(tier, expected, 0)
    left = payload(expected[0][ends[0]:])
    assert left <= SEGMENT_BYTES, f"{left} payload bytes not tiered at local.retention.bytes 0"
    assert ck_watermarks(cloud.bootstrap, topic_name) == (0, n)
    got = ck_read_all(cloud.bootstrap, topic_name, start=0, timeout=90)
    assert_records(got, expected[0], "local.retention.bytes 0, from offset 0")


@pytest.mark.timeout(240)
def test_list_offsets_after_tiering(cloud_factory, moto, s3, bucket, topic_name):
    """3000 records with CreateTime timestamps base + i (one hour ago, one ms apart),
    tiered as in the first test. Watermarks (low via ListOffsets earliest, high via
    latest) are (0, 3000). ListOffsets by timestamp: 0 for timestamp 0 and for one older
    than every record; for base + i with record i local, i (the first offset at or after
    that time, as for any topic, whether record i is local or in an uploaded segment,
    which the cloud reads to find it), and -1 after the last record. The records read
    back carry their timestamps."""
    cloud = cloud_factory(tier_overrides(moto, bucket))
    create_tiered(cloud.bootstrap, topic_name)
    n = 3000
    base = int(time.time() * 1000) - 3_600_000
    expected = produce(cloud.bootstrap, topic_name, make_records(n, "f", ts_base=base),
                       flushes=6)
    assert [r.timestamp for r in expected[0]] == [base + i for i in range(n)], \
        "delivery reports do not carry the timestamps given"
    segs, ends = tier_and_check(Tier(s3, bucket, topic_name), expected, LOCAL_BYTES)
    end = ends[0]
    mid = segs[0][len(segs[0]) // 2]

    assert ck_watermarks(cloud.bootstrap, topic_name) == (0, n)

    def answers(i: int) -> set[int]:
        """The right answer for a target at record i's timestamp, local or tiered."""
        return {i}

    records_at = [5, (mid.base + mid.end) // 2, end - 1, end, n - 1]
    assert end - 1 > segs[0][-1].base and (mid.base + mid.end) // 2 > mid.base, \
        "targets meant to fall inside segments, not on their bases"
    targets = {0: {0}, base - 60_000: {0}, base: {0}, base + n: {-1},
               **{base + i: answers(i) for i in records_at}}
    c = ck_consumer(cloud.bootstrap)
    try:
        got = {}
        for t in targets:  # one partition per ListOffsets request
            (r,) = c.offsets_for_times([TopicPartition(topic_name, 0, t)], timeout=10)
            assert r.error is None, (t, r.error)
            got[t] = r.offset
    finally:
        c.close()
    wrong = {f"record {t - base}" if t >= base else f"ts {t}": (got[t], sorted(ok))
             for t, ok in targets.items() if got[t] not in ok}
    assert not wrong, f"ListOffsets by time: (answer, right answers) {wrong}"

    recs = ck_read_all(cloud.bootstrap, topic_name, start=0, timeout=90)
    assert_records(recs, expected[0], "records with their timestamps")


@pytest.mark.timeout(240)
def test_retention_bytes_drops_the_oldest_segments(cloud_factory, moto, s3, bucket, topic_name):
    """A tiered topic with retention.bytes = 800 000: once 3000 records of 1 KB are tiered,
    the oldest segments are dropped whole (objects deleted from the bucket), what is left
    (segments plus local) fits retention.bytes plus a segment, ListOffsets earliest is the
    first remaining segment's base, and a reader from there gets every record after it,
    intact, up to the end."""
    retention = 800_000
    cloud = cloud_factory(tier_overrides(moto, bucket))
    create_tiered(cloud.bootstrap, topic_name, **{"retention.bytes": str(retention)})
    n = 3000
    expected = produce(cloud.bootstrap, topic_name, make_records(n, "r"), flushes=6)
    tier = Tier(s3, bucket, topic_name)

    def dropped_enough():
        # From the listing alone: an object listed may be deleted before a GET.
        objs = tier.objects()
        return (bool(objs) and not objs[0][0].endswith(f"/0/{0:020d}.log")
                and sum(size for _, size, _ in objs) <= retention)

    wait_for(dropped_enough, TIER_TIMEOUT_S,
             what=lambda: f"oldest segments dropped: {[(k, n) for k, n, _ in tier.objects()]}")
    # Tiering and expiry settle (no object added for a while). An object listed can still
    # be deleted before its GET (its index entry went first): list again then.
    deadline = time.monotonic() + TIER_TIMEOUT_S
    while True:
        try:
            segs = wait_settled(tier)[0]
            break
        except s3.exceptions.NoSuchKey:
            assert time.monotonic() < deadline, "objects kept disappearing"
    start = segs[0].base
    for a, b in zip(segs, segs[1:]):
        assert a.end == b.base, "the remaining segments still chain"
    assert 0 < start < n
    low, high = ck_watermarks(cloud.bootstrap, topic_name)
    assert high == n
    # The index drops a segment before its object goes, so once the bucket lost it,
    # ListOffsets earliest is past it.
    assert low >= start, (low, start)
    recs = ck_read_all(cloud.bootstrap, topic_name, start=low, timeout=90)
    assert_records(recs, expected[0][low:], "records from the new start")


def assert_payloads(client: Mqtt, want: list[bytes], what: str, timeout: float = 60):
    """The client receives exactly `want`, in order (compared by each record's numbered
    prefix first, so a failure names offsets, not a megabyte of payloads)."""
    got = []
    try:
        while len(got) < len(want):
            got.append(client.messages.get(timeout=timeout).payload)
    except queue.Empty:
        pass
    tag = lambda v: v.split(b"|", 1)[0].decode()  # noqa: E731
    assert [tag(v) for v in got] == [tag(v) for v in want], (
        f"{what}: {len(got)} of {len(want)} messages, first "
        f"{[tag(v) for v in got[:3]]}, expected first {[tag(v) for v in want[:3]]}")
    assert got == want, f"{what}: payloads differ"


@pytest.mark.timeout(240)
def test_offline_mqtt_sessions_get_what_moved_to_s3_meanwhile(
        cloud_factory, moto, s3, bucket, topic_name):
    """An MQTT session's queue is a position in the log, so it survives tiering: an MQTT 5
    subscriber (clean start off, session expiry 1 h) and a shared subscription
    ($share/g/...) subscribe QoS 1 to a tiered topic's MQTT name and go offline; 1000
    records of 1 KB are produced over Kafka and tiering moves all but the newest ~300 KB
    to S3 (local copies deleted). On reconnect the session gets all 1000 payloads in
    offset order, and the shared subscription's only member (re-subscribing within the
    group's expiry) likewise: the ones read from S3 segments, then the local ones."""
    cloud = start_mqtt_cloud(cloud_factory, tier_overrides(moto, bucket))
    log_topic = topic_name.replace("_", "-")
    create_tiered(cloud.bootstrap, log_topic)
    mqtt_topic = log_topic.replace(".", "/")
    session = props(PacketTypes.CONNECT, SessionExpiryInterval=3600)
    sub = Mqtt(cloud.mqtt_port, version=5, clean=False, connect_props=session)
    sub.subscribe(mqtt_topic, qos=1)
    member = Mqtt(cloud.mqtt_port, version=5)
    member.subscribe(f"$share/g/{mqtt_topic}", qos=1)
    sub.close()
    member.close()

    n = 1000
    expected = produce(cloud.bootstrap, log_topic, make_records(n, "m"), flushes=4)
    tier = Tier(s3, bucket, log_topic)
    _, ends = tier_and_check(tier, expected, LOCAL_BYTES)
    assert ends[0] >= 500, f"only offsets below {ends[0]} tiered"
    want = [r.value for r in expected[0]]

    sub = Mqtt(cloud.mqtt_port, version=5, client_id=sub.client_id, clean=False,
               connect_props=session)
    assert sub.connack[0].session_present, "the session was kept"
    assert_payloads(sub, want, "session")

    member = Mqtt(cloud.mqtt_port, version=5)
    member.subscribe(f"$share/g/{mqtt_topic}", qos=1)
    assert_payloads(member, want, "shared subscription")
    sub.close()
    member.close()
    cloud.assert_alive()


@pytest.mark.timeout(60)
def test_delete_records_is_refused_on_tiered_topics(cloud_factory, moto, bucket, topic_name):
    """DeleteRecords on a tiered topic: POLICY_VIOLATION (its start is the first
    uploaded segment's), and the watermarks stay."""
    from confluent_kafka import KafkaError, KafkaException
    cloud = cloud_factory(tier_overrides(moto, bucket))
    create_tiered(cloud.bootstrap, topic_name)
    produce(cloud.bootstrap, topic_name, make_records(5, "d"), flushes=1)
    admin = ck_admin(cloud.bootstrap)
    tp = TopicPartition(topic_name, 0, 3)
    with pytest.raises(KafkaException) as ei:
        admin.delete_records([tp])[tp].result(timeout=20)
    assert ei.value.args[0].code() == KafkaError.POLICY_VIOLATION, ei.value
    assert ck_watermarks(cloud.bootstrap, topic_name) == (0, 5)
