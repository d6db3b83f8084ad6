"""kcat (Debian, librdkafka 2.0.2) against the cloud: every codec, metadata, offsets,
keys and headers."""

import json
import subprocess
import time

import pytest

import kwire
from helpers import CODECS, assert_batches_codec, ck_create_topic, kcat, kcat_consume, kcat_produce


@pytest.mark.parametrize("codec", CODECS)
def test_produce_consume_each_codec(module_cloud, codec):
    topic = f"kcat.codec.{codec}"
    # Compressible, distinct lines so a compressed batch holds many records.
    lines = [f"{codec}-record-{i:05d}-" + "x" * (i % 50) for i in range(300)]
    kcat_produce(module_cloud.bootstrap, topic, lines, codec=codec)

    got = kcat_consume(module_cloud.bootstrap, topic)
    assert [r.value.decode() for r in got] == lines
    assert [r.offset for r in got] == list(range(len(lines)))

    # The broker stores batches as produced: the stored batches carry kcat's codec and a
    # valid CRC (only the base offset was rewritten), and cover every offset once.
    batches = kwire.fetch_all_batches(module_cloud.host, module_cloud.port, topic)
    assert batches, "raw fetch returned no batches"
    assert_batches_codec(batches, codec)
    assert all(b.magic == 2 and b.crc_ok() for b in batches)
    covered = []
    for b in batches:
        covered += range(b.base_offset, b.base_offset + b.last_offset_delta + 1)
    assert covered == list(range(len(lines)))


def test_metadata_lists_broker_and_topic(module_cloud):
    topic = "kcat.metadata"
    kcat_produce(module_cloud.bootstrap, topic, ["one"])
    p = kcat(["-b", module_cloud.bootstrap, "-L", "-J"])
    md = json.loads(p.stdout)
    brokers = md["brokers"]
    assert [b["id"] for b in brokers] == [0]
    assert brokers[0]["name"] == module_cloud.bootstrap  # advertised = bound address
    topics = {t["topic"]: t for t in md["topics"]}
    assert topic in topics
    parts = topics[topic]["partitions"]
    assert [p["partition"] for p in parts] == [0]
    assert parts[0]["leader"] == 0

    # -L -t <topic>: only that topic.
    p = kcat(["-b", module_cloud.bootstrap, "-L", "-J", "-t", topic])
    md = json.loads(p.stdout)
    assert [t["topic"] for t in md["topics"]] == [topic]
    assert "error" not in md["topics"][0] or not md["topics"][0]["error"]


def test_consume_from_offsets(module_cloud):
    topic = "kcat.offsets"
    lines = [f"m{i}" for i in range(20)]
    kcat_produce(module_cloud.bootstrap, topic, lines)
    b = module_cloud.bootstrap

    assert [r.value.decode() for r in kcat_consume(b, topic, "beginning")] == lines
    assert [r.value.decode() for r in kcat_consume(b, topic, "7")] == lines[7:]
    assert [r.offset for r in kcat_consume(b, topic, "7")] == list(range(7, 20))
    assert [r.value.decode() for r in kcat_consume(b, topic, "-5")] == lines[-5:]
    assert [r.value.decode() for r in kcat_consume(b, topic, "beginning", count=3)] == lines[:3]

    # -o end: a consumer started at the end sees only records produced after it started.
    # We cannot observe when kcat has resolved "end", so keep producing fresh markers until
    # it prints one; whatever it prints must be a marker, never an old record.
    proc = subprocess.Popen(["kcat", "-b", b, "-C", "-t", topic, "-o", "end", "-c", "1", "-q", "-u"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        i = 0
        deadline = time.monotonic() + 30
        while proc.poll() is None:
            assert time.monotonic() < deadline, "kcat -o end never printed a new record"
            kcat_produce(b, topic, [f"after-end-{i}"])
            i += 1
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        printed = out.decode().split()
        assert len(printed) == 1 and printed[0].startswith("after-end-"), printed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_keys_and_headers_round_trip(module_cloud):
    topic = "kcat.keys.headers"
    lines = [f"key{i}:value{i}" for i in range(10)] + [":no-key-value"]
    kcat_produce(module_cloud.bootstrap, topic, lines, key_delim=":",
                 headers=["h1=v1", "trace=abc=def", "h1=second"])
    got = kcat_consume(module_cloud.bootstrap, topic)
    assert [(r.key, r.value) for r in got[:10]] == [
        (f"key{i}".encode(), f"value{i}".encode()) for i in range(10)]
    # kcat -K: produces an empty (not NULL) key for ":value"
    assert got[10].value == b"no-key-value"
    assert got[10].key in (b"", None)
    for r in got:
        # Order and duplicates of header names are preserved.
        assert r.headers == (("h1", b"v1"), ("trace", b"abc=def"), ("h1", b"second")), r.headers


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_partitioned_produce_and_query_by_timestamp(module_cloud, codec):
    """-p per partition, and kcat -Q (ListOffsets by timestamp)."""
    topic = f"kcat.partitions.{codec}"
    ck_create_topic(module_cloud.bootstrap, topic, partitions=3)
    for p in range(3):
        kcat_produce(module_cloud.bootstrap, topic, [f"p{p}-{i}" for i in range(5)], codec=codec,
                     partition=p)
    for p in range(3):
        got = kcat_consume(module_cloud.bootstrap, topic, partition=p)
        assert [r.value.decode() for r in got] == [f"p{p}-{i}" for i in range(5)]
        assert {r.partition for r in got} == {p}

    got = kcat_consume(module_cloud.bootstrap, topic, partition=1)
    target = got[2].timestamp  # the first record with ts >= target has offset <= 2
    expected = min(r.offset for r in got if r.timestamp >= target)
    out = kcat(["-b", module_cloud.bootstrap, "-Q", "-t", f"{topic}:1:{target}"]).stdout.decode()
    # kcat prints "<topic> [1] offset N"
    words = out.split()
    assert "offset" in words, out
    assert int(words[words.index("offset") + 1]) == expected, out
