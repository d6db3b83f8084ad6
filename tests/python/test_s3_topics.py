"""S3-backed topics: a topic created with topic config `source` = `s3://<bucket>/<prefix>`
is served over Kafka Fetch from the objects under that prefix (read-only).

`source.format`:
  object  one record per object: key = the full object key, value = its bytes;
  line    one record per line: key null, value the line without `\\n` (and one `\\r`);
  tar     one record per regular-file member of an uncompressed tar: key = member path.
Object n (key order) goes to partition n % partitions; every record carries header
`s3.key` and the object's Last-Modified (ms) as its timestamp. The index grows in the
background, is re-listed every `s3.refresh_ms` (new keys appended), survives a SIGKILL,
and reads go through a memory and a disk cache whose eviction keeps what the next
sequential epoch needs first.

S3 is a `moto_server` started by this module on 127.0.0.1 (a free port); buckets and
objects are made with boto3, one fresh bucket per test. Clients: confluent-kafka, kcat.
"""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from s3_fixtures import (REGION, MotoServer, bucket, expect_invalid_config,  # noqa: F401
                         moto, poll_records, s3)
from helpers import (Rec, ck_admin, ck_consumer, ck_create_topic, ck_produce, ck_producer,
                     ck_read_all, kcat, wait_for)

S3_KEY = "s3.key"
INDEX_TIMEOUT_S = 30.0


# ---- moto (S3) -----------------------------------------------------------------------


def s3_overrides(moto: MotoServer, **s3) -> dict:
    """Cloud config overrides with the `s3` section pointing at the moto server."""
    base = {"endpoint": moto.endpoint, "region": REGION, "access_key_id": "testing",
            "secret_access_key": "testing", "allow_http": True, "refresh_ms": 60000}
    base.update(s3)
    return {"s3": base}


# ---- helpers -------------------------------------------------------------------------


def put_all(s3, bucket: str, objects: dict[str, bytes]):
    """Uploads in the dict's order (tests give a non-sorted order on purpose)."""
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def last_modified_ms(s3, bucket: str, key: str) -> int:
    return int(s3.head_object(Bucket=bucket, Key=key)["LastModified"].timestamp() * 1000)


def byte_sorted(keys) -> list[str]:
    return sorted(keys, key=lambda k: k.encode())


def create_s3_topic(bootstrap: str, topic: str, source: str, partitions: int = 1,
                    fmt: str | None = None):
    config = {"source": source}
    if fmt is not None:
        config["source.format"] = fmt
    ck_create_topic(bootstrap, topic, partitions=partitions, config=config)


def wait_indexed(bootstrap: str, topic: str, counts: list[int], timeout: float = INDEX_TIMEOUT_S):
    """Waits until partition p's watermarks are (0, counts[p]) for every p; fails at
    once if a high watermark goes past its expected count."""
    last: dict[int, tuple] = {}
    c = ck_consumer(bootstrap)
    try:
        def cond():
            for p, n in enumerate(counts):
                last[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                                  cached=False)
                if last[p][1] > n:
                    pytest.fail(f"{topic}[{p}] high watermark {last[p][1]} is past the "
                                f"expected {n} (watermarks so far {last})")
            return all(last[p] == (0, n) for p, n in enumerate(counts))
        wait_for(cond, timeout, interval=0.1,
                 what=lambda: f"{topic} indexed: watermarks {last}, expected (0, n) for "
                              f"n in {counts}")
    finally:
        c.close()


def to_rec(m) -> Rec:
    return Rec(m.partition(), m.offset(), m.key(), m.value(),
               tuple((k, v) for k, v in (m.headers() or [])), m.timestamp()[1])


def s3_key_header(r: Rec) -> list[bytes]:
    return [v for k, v in r.headers if k == S3_KEY]


def assert_object_records(recs: list[Rec], expected: list[tuple[int, int, str, bytes]],
                          s3, bucket: str):
    """`expected`: (partition, offset, key, value) per record, in order; object format:
    the record key and the s3.key header are the object key."""
    got = [(r.partition, r.offset, r.key) for r in recs]
    want = [(p, o, k.encode()) for p, o, k, _ in expected]
    assert got == want, f"(partition, offset, key) {got} != {want}"
    for r, (_, _, key, value) in zip(recs, expected):
        assert r.value == value, (
            f"value of {key} at offset {r.offset}: {len(r.value or b'')} bytes "
            f"{(r.value or b'')[:20]!r}..., expected {len(value)} bytes {value[:20]!r}...")
        assert s3_key_header(r) == [key.encode()], f"{key}: headers {r.headers}"
        assert r.timestamp == last_modified_ms(s3, bucket, key), (
            f"{key}: timestamp {r.timestamp} != Last-Modified "
            f"{last_modified_ms(s3, bucket, key)}")


def dir_bytes(d: Path) -> int:
    d = Path(d)
    if not d.exists():
        return 0
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def make_tar(members: list[tuple[str, str, object]]) -> bytes:
    """members: (name, kind, payload) with kind file (payload bytes), dir, or symlink
    (payload = link target). Member mtimes are 2001-09-09, far from any Last-Modified."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_000_000_000
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            elif kind == "symlink":
                ti.type = tarfile.SYMTYPE
                ti.linkname = payload
                tf.addfile(ti)
            else:
                assert kind == "file", kind
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
    return buf.getvalue()


# ---- tests ---------------------------------------------------------------------------


def test_object_format_serves_each_object_under_the_prefix_in_key_order(
        cloud_factory, moto, s3, bucket, topic_name):
    """Object format, one partition: the five objects under `data/` (nested keys included,
    an empty object included) and none of the others (`other/x.bin`, and `data2/x.bin`
    which shares the string prefix but is not under the directory `data/`) come out as
    records at offsets 0..4 in byte order of their keys (uploaded out of order; `B` < `a`,
    `a.bin` < `a/x.bin`), key = the full object key, value byte-equal, header s3.key = the
    key, timestamp = Last-Modified in ms. ListOffsets gives (0, 5). kcat reads the same
    keys, timestamps and sizes. A second topic with `s3://bucket` (no prefix) serves the
    whole bucket (all seven objects, key order)."""
    inside = {
        "data/c.bin": os.urandom(70_000),
        "data/a/x.bin": os.urandom(300_000),
        "data/a.bin": os.urandom(1000),
        "data/empty.bin": b"",
        "data/B.bin": b"upper case sorts first",
    }
    outside = {"other/x.bin": b"not mine", "data2/x.bin": b"not under data/ either"}
    put_all(s3, bucket, {**inside, **outside})
    cloud = cloud_factory(s3_overrides(moto))

    create_s3_topic(cloud.bootstrap, topic_name, f"s3://{bucket}/data")
    wait_indexed(cloud.bootstrap, topic_name, [len(inside)])
    keys = byte_sorted(inside)
    assert keys == ["data/B.bin", "data/a.bin", "data/a/x.bin", "data/c.bin", "data/empty.bin"]
    got = ck_read_all(cloud.bootstrap, topic_name)
    assert_object_records(got, [(0, i, k, inside[k]) for i, k in enumerate(keys)], s3, bucket)

    out = kcat(["-b", cloud.bootstrap, "-C", "-t", topic_name, "-o", "beginning", "-e", "-q",
                "-f", "%p\\t%o\\t%k\\t%T\\t%S\\n"]).stdout.decode()
    rows = [line.split("\t") for line in out.splitlines() if line]
    assert rows == [["0", str(i), k, str(last_modified_ms(s3, bucket, k)), str(len(inside[k]))]
                    for i, k in enumerate(keys)], out

    whole = topic_name + ".whole"
    everything = {**inside, **outside}
    create_s3_topic(cloud.bootstrap, whole, f"s3://{bucket}", fmt="object")
    wait_indexed(cloud.bootstrap, whole, [len(everything)])
    all_keys = byte_sorted(everything)
    assert_object_records(ck_read_all(cloud.bootstrap, whole),
                          [(0, i, k, everything[k]) for i, k in enumerate(all_keys)], s3, bucket)


def test_line_format_spreads_objects_over_partitions_line_by_line(
        cloud_factory, moto, s3, bucket, topic_name):
    """Line format, two partitions: object n (key order, the empty object counts) goes to
    partition n % 2 and gives one record per line in line order: key null, value without
    the `\\n` and one `\\r` before it (so `\\r\\r\\n` leaves one `\\r`), an empty middle line
    is an empty (not null) value, a last line without `\\n` is a record, nothing after a
    final `\\n`, bytes are not decoded (a Latin-1 byte passes through); the empty object
    gives no record. Headers s3.key and timestamps are the object's. The high watermarks
    reach exactly the line counts (8 and 2)."""
    objects = [  # (key, body, expected values), in key order
        ("lines/0.txt", b"alpha\n\nbeta\r\ngamma", [b"alpha", b"", b"beta", b"gamma"]),
        ("lines/1.txt", b"", []),
        ("lines/2.txt", b"one\ntwo\r\r\n\n", [b"one", b"two\r", b""]),
        ("lines/3.txt", b"caf\xe9 solo", [b"caf\xe9 solo"]),
        ("lines/4.txt", b"x\n", [b"x"]),
        ("lines/5.txt", b"\n", [b""]),
    ]
    assert [k for k, _, _ in objects] == byte_sorted(k for k, _, _ in objects)
    put_all(s3, bucket, {k: body for k, body, _ in reversed(objects)})
    cloud = cloud_factory(s3_overrides(moto))

    create_s3_topic(cloud.bootstrap, topic_name, f"s3://{bucket}/lines", partitions=2, fmt="line")
    expected: dict[int, list[tuple[str, bytes]]] = {0: [], 1: []}
    for n, (key, _, values) in enumerate(objects):
        expected[n % 2] += [(key, v) for v in values]
    assert [len(expected[0]), len(expected[1])] == [8, 2]
    wait_indexed(cloud.bootstrap, topic_name, [8, 2])

    got = ck_read_all(cloud.bootstrap, topic_name)
    for p in (0, 1):
        recs = sorted((r for r in got if r.partition == p), key=lambda r: r.offset)
        assert [r.offset for r in recs] == list(range(len(expected[p]))), (p, recs)
        assert [r.value for r in recs] == [v for _, v in expected[p]], p
        assert all(r.key is None for r in recs), [r.key for r in recs]
        for r, (key, _) in zip(recs, expected[p]):
            assert s3_key_header(r) == [key.encode()], (p, r.offset, r.headers)
            assert r.timestamp == last_modified_ms(s3, bucket, key), (p, r.offset, key)


def test_tar_format_serves_regular_file_members_in_archive_order(
        cloud_factory, moto, s3, bucket, topic_name):
    """Tar format: each regular file member of each archive (archives in key order) is a
    record in archive order, key = the member path as written (including a path longer
    than 100 bytes, stored with a PAX header), value = its data; the directories and the
    symlink are skipped. s3.key is the archive's key and the timestamp the archive's
    Last-Modified (not the members' mtime)."""
    long_path = "imgs/deep/" + "n" * 110 + ".jpg"
    b_members = [
        ("notes.txt", "file", b"hello\n"),
        ("imgs", "dir", None),
        ("imgs/001.jpg", "file", os.urandom(50_000)),
        ("latest.jpg", "symlink", "imgs/001.jpg"),
        ("imgs/deep", "dir", None),
        (long_path, "file", os.urandom(3000)),
        ("a.bin", "file", b"\x00\x01 last member"),
    ]
    a_members = [("only.txt", "file", b"from the first archive")]
    put_all(s3, bucket, {"tars/b.tar": make_tar(b_members), "tars/a.tar": make_tar(a_members)})
    cloud = cloud_factory(s3_overrides(moto))

    create_s3_topic(cloud.bootstrap, topic_name, f"s3://{bucket}/tars", fmt="tar")
    expected = ([("tars/a.tar", n, d) for n, kind, d in a_members if kind == "file"]
                + [("tars/b.tar", n, d) for n, kind, d in b_members if kind == "file"])
    assert len(expected) == 5
    wait_indexed(cloud.bootstrap, topic_name, [len(expected)])

    got = ck_read_all(cloud.bootstrap, topic_name)
    assert [r.offset for r in got] == list(range(len(expected)))
    assert [r.key for r in got] == [n.encode() for _, n, _ in expected]
    for r, (archive, name, data) in zip(got, expected):
        assert r.value == data, name
        assert s3_key_header(r) == [archive.encode()], (name, r.headers)
        assert r.timestamp == last_modified_ms(s3, bucket, archive), name


def test_refresh_appends_new_keys_after_the_old_offsets(
        cloud_factory, moto, s3, bucket, topic_name):
    """refresh_ms 300: a consumer that read the two existing objects and keeps polling gets
    the objects uploaded afterwards - one whose key sorts before every existing key, then
    one after - at offsets 2 and 3 (appended, in that order), while offsets 0 and 1 keep
    their objects. A third upload arriving at offset 4 shows a later re-listing happened;
    it did not append the already-seen keys again nor move anything."""
    old = {"r/m1": b"first old", "r/m2": b"second old"}
    put_all(s3, bucket, old)
    cloud = cloud_factory(s3_overrides(moto, refresh_ms=300))
    create_s3_topic(cloud.bootstrap, topic_name, f"s3://{bucket}/r")
    wait_indexed(cloud.bootstrap, topic_name, [2])

    c = ck_consumer(cloud.bootstrap, **{"enable.partition.eof": False})
    try:
        c.assign([TopicPartition(topic_name, 0, OFFSET_BEGINNING)])
        first = poll_records(c, 2, 30, "the existing objects")
        assert [(r.offset, r.key) for r in first] == [(0, b"r/m1"), (1, b"r/m2")]
        new = {"r/a0": b"sorts before the old keys", "r/z9": b"sorts after the old keys"}
        put_all(s3, bucket, new)  # a0 first: whether one listing or two sees them, a0, z9
        later = poll_records(c, 2, 30, "the new objects, long-polled by the same consumer")
        assert [(r.offset, r.key, r.value) for r in later] == [
            (2, b"r/a0", new["r/a0"]), (3, b"r/z9", new["r/z9"])]
    finally:
        c.close()

    put_all(s3, bucket, {"r/b5": b"third upload"})
    wait_indexed(cloud.bootstrap, topic_name, [5])
    everything = {**old, **new, "r/b5": b"third upload"}
    order = ["r/m1", "r/m2", "r/a0", "r/z9", "r/b5"]
    assert_object_records(ck_read_all(cloud.bootstrap, topic_name),
                          [(0, i, k, everything[k]) for i, k in enumerate(order)], s3, bucket)


@pytest.mark.timeout(180)
def test_index_and_group_offsets_survive_a_kill(cloud_factory, moto, s3, bucket, topic_name):
    """refresh_ms 0 (list at creation and at start only). Six objects indexed; a group
    consumer reads three and commits offset 3; the cloud is SIGKILLed; two objects are
    uploaded (one sorting before every indexed key, uploaded last). After a restart on the
    same data dir, offsets 0..5 hold exactly the records they held before (key, value,
    header, timestamp), the two new objects are appended at 6 and 7 in key order, and the
    group resumes at its committed offset 3."""
    objects = {f"d/k{i}": f"object {i} ".encode() + os.urandom(2000) for i in range(6)}
    put_all(s3, bucket, objects)
    cloud = cloud_factory(s3_overrides(moto, refresh_ms=0))
    create_s3_topic(cloud.bootstrap, topic_name, f"s3://{bucket}/d")
    wait_indexed(cloud.bootstrap, topic_name, [6])
    before = ck_read_all(cloud.bootstrap, topic_name)
    keys = byte_sorted(objects)
    assert_object_records(before, [(0, i, k, objects[k]) for i, k in enumerate(keys)], s3, bucket)

    group = f"g.{topic_name}"
    c = ck_consumer(cloud.bootstrap, group, **{"enable.partition.eof": False})
    try:
        c.subscribe([topic_name])
        head = poll_records(c, 3, 30, "the group's first three records")
        assert [r.offset for r in head] == [0, 1, 2]
        c.commit(offsets=[TopicPartition(topic_name, 0, 3)], asynchronous=False)
        (tp,) = c.committed([TopicPartition(topic_name, 0)], timeout=10)
        assert tp.offset == 3, tp
    finally:
        c.close()

    cloud.kill()
    added = {"d/k9": b"added while down, after", "d/a0": b"added while down, sorts first"}
    put_all(s3, bucket, added)
    cloud.start()

    wait_indexed(cloud.bootstrap, topic_name, [8])
    after = ck_read_all(cloud.bootstrap, topic_name)
    assert after[:6] == before, "the indexed offsets changed across the restart"
    assert_object_records(after[6:], [(0, 6, "d/a0", added["d/a0"]), (0, 7, "d/k9", added["d/k9"])],
                          s3, bucket)

    c = ck_consumer(cloud.bootstrap, group, **{"enable.partition.eof": False})
    try:
        c.subscribe([topic_name])
        rest = poll_records(c, 5, 60, "the group resuming after the restart")
        assert [(r.offset, r.key) for r in rest] == [(r.offset, r.key) for r in after[3:]]
    finally:
        c.close()


def test_disk_cache_serves_objects_deleted_from_s3(cloud_factory, moto, s3, bucket, topic_name):
    """Memory tier of 1 byte, disk tier of 1 GiB (default dir <data_dir>/s3-cache): once
    every object was read, the cache dir holds at least their bytes; after every object is
    deleted from the bucket (and re-listings with refresh_ms 300 see an empty prefix), a
    new consumer from the beginning still gets every record, same offsets and values, and
    the high watermark stays where it was."""
    objects = {f"c/{i:02d}": os.urandom(40_000) for i in range(8)}
    put_all(s3, bucket, objects)
    cloud = cloud_factory(s3_overrides(moto, refresh_ms=300,
                                       cache={"memory_bytes": 1, "disk_bytes": 1 << 30}))
    create_s3_topic(cloud.bootstrap, topic_name, f"s3://{bucket}/c")
    wait_indexed(cloud.bootstrap, topic_name, [8])
    keys = byte_sorted(objects)
    expected = [(0, i, k, objects[k]) for i, k in enumerate(keys)]
    assert_object_records(ck_read_all(cloud.bootstrap, topic_name), expected, s3, bucket)
    total = sum(len(v) for v in objects.values())
    cache_dir = cloud.data_dir / "s3-cache"
    wait_for(lambda: dir_bytes(cache_dir) >= total, 20,
             what=lambda: f"{total} bytes in {cache_dir} (has {dir_bytes(cache_dir)})")

    timestamps = {k: last_modified_ms(s3, bucket, k) for k in keys}
    for k in keys:
        s3.delete_object(Bucket=bucket, Key=k)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0

    again = ck_read_all(cloud.bootstrap, topic_name)
    assert [(r.offset, r.key) for r in again] == [(i, k.encode()) for _, i, k, _ in expected]
    for r, k in zip(again, keys):
        assert r.value == objects[k], k
        assert s3_key_header(r) == [k.encode()] and r.timestamp == timestamps[k], r
    wait_indexed(cloud.bootstrap, topic_name, [8], timeout=5)


def test_memory_cache_keeps_the_objects_the_next_epoch_needs_first(
        cloud_factory, moto, s3, bucket, topic_name):
    """Eviction policy. No disk tier, a memory tier of 550 000 bytes (room for five of the
    ten 100 000-byte objects), plus a 3-byte sentinel object sorting last that stays in
    S3. One consumer reads everything once; the ten objects are deleted from S3; a new
    consumer reads from the beginning: what the memory tier kept comes with its value,
    the rest as tombstones (null value) at the same offsets, then the sentinel.

    Under the spec's rule (evict the object whose next use, reading forward and wrapping
    to offset 0, is furthest) the first objects in key order are kept: c/00..c/(k-1)
    with k >= 3, and at most five objects in all (the byte bound). Not necessarily only
    a prefix: the object at the reader's position is needed now and cannot be a victim,
    the next object may be loaded while the reader is still on the previous one (so one
    prefix object can go to make room), and the last object read stays because nothing
    displaces it after the pass - hence k >= 3 and not k >= 4 or "exactly a prefix".
    An LRU or FIFO cache keeps the last objects read (c/05..c/09), no c/00, and fails.
    prefetch_ms is 0 so that no look-ahead beyond the next object takes slots."""
    objects = {f"c/{i:02d}": os.urandom(100_000) for i in range(10)}
    sentinel = ("c/zz-sentinel", b"end")
    put_all(s3, bucket, {**objects, sentinel[0]: sentinel[1]})
    cloud = cloud_factory(s3_overrides(moto, cache={"memory_bytes": 550_000, "disk_bytes": 0,
                                                    "prefetch_ms": 0}))
    create_s3_topic(cloud.bootstrap, topic_name, f"s3://{bucket}/c")
    wait_indexed(cloud.bootstrap, topic_name, [11])
    keys = byte_sorted(objects)
    assert byte_sorted([*keys, sentinel[0]])[-1] == sentinel[0]
    assert_object_records(ck_read_all(cloud.bootstrap, topic_name),
                          [(0, i, k, objects[k]) for i, k in enumerate(keys)]
                          + [(0, 10, sentinel[0], sentinel[1])], s3, bucket)

    for k in keys:
        s3.delete_object(Bucket=bucket, Key=k)
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert left == [sentinel[0]], left

    again = ck_read_all(cloud.bootstrap, topic_name)  # a new consumer, from offset 0
    # Every offset still holds a record: a deleted object the cache lost is a tombstone
    # (null value, same key and s3.key header), so readers never stall at a gap.
    assert [r.offset for r in again] == list(range(11)), [r.offset for r in again]
    assert (again[-1].key, again[-1].value) == (sentinel[0].encode(), sentinel[1])
    for r in again[:-1]:
        assert r.key == keys[r.offset].encode(), r
        assert s3_key_header(r) == [keys[r.offset].encode()], r
    assert any(r.value is None for r in again[:-1]), "the memory tier cannot hold all ten"
    kept = [(r.offset, r.key.decode()) for r in again[:-1] if r.value is not None]
    idx = [o for o, _ in kept]
    k = 0
    while k < len(idx) and idx[k] == k:
        k += 1
    explain = (f"objects served after their deletion (offset, key): {kept}; an LRU would "
               f"have kept the last ones read, this rule must keep the first ones")
    assert k >= 3, f"only the first {k} objects kept. {explain}"
    assert len(idx) <= 5, f"{len(idx)} objects of 100 000 bytes in 550 000 bytes. {explain}"
    for r in again[:-1]:
        if r.value is not None:
            assert r.value == objects[r.key.decode()], r.key


def test_bad_source_config_is_refused_and_the_cloud_keeps_serving(
        cloud_factory, moto, s3, bucket, topic_name):
    """CreateTopics fails with INVALID_CONFIG (40) and creates nothing for: a source that is
    not s3://bucket[/prefix] (`http://x/y`, `s3://`), an unknown source.format (`csv`),
    and a bucket that does not exist. Afterwards a plain topic is created, produced to and
    read, and a valid S3 topic on the same bucket works."""
    s3.put_object(Bucket=bucket, Key="p/one", Body=b"one")
    cloud = cloud_factory(s3_overrides(moto))
    a = ck_admin(cloud.bootstrap)
    expect_invalid_config(a, topic_name + ".http", {"source": "http://x/y"})
    expect_invalid_config(a, topic_name + ".empty", {"source": "s3://"})
    expect_invalid_config(a, topic_name + ".csv",
                          {"source": f"s3://{bucket}/p", "source.format": "csv"})
    missing = f"s3t-no-such-bucket-{uuid.uuid4().hex[:8]}"
    expect_invalid_config(a, topic_name + ".nobucket", {"source": f"s3://{missing}/p"})
    cloud.assert_alive()

    plain = topic_name + ".plain"
    ck_create_topic(cloud.bootstrap, plain)
    ck_produce(cloud.bootstrap, plain, [{"value": b"still serving"}])
    assert [r.value for r in ck_read_all(cloud.bootstrap, plain)] == [b"still serving"]

    create_s3_topic(cloud.bootstrap, topic_name, f"s3://{bucket}/p")
    wait_indexed(cloud.bootstrap, topic_name, [1])
    assert [r.value for r in ck_read_all(cloud.bootstrap, topic_name)] == [b"one"]


def test_produce_to_an_s3_topic_fails_with_invalid_topic(
        cloud_factory, moto, s3, bucket, topic_name):
    """A confluent-kafka Produce to an S3 topic gets a delivery report with error 17
    (TOPIC_EXCEPTION, INVALID_TOPIC_EXCEPTION); nothing is appended (still one record at
    offset 0), and the cloud keeps serving (a plain topic takes a produce afterwards)."""
    s3.put_object(Bucket=bucket, Key="ro/obj", Body=b"read only")
    cloud = cloud_factory(s3_overrides(moto))
    create_s3_topic(cloud.bootstrap, topic_name, f"s3://{bucket}/ro")
    wait_indexed(cloud.bootstrap, topic_name, [1])

    p = ck_producer(cloud.bootstrap, **{"message.timeout.ms": 20000})
    reports = []
    p.produce(topic_name, value=b"must not land", key=b"k",
              on_delivery=lambda err, m: reports.append(err))
    assert p.flush(40) == 0, "no delivery report"
    assert len(reports) == 1 and reports[0] is not None, reports
    assert reports[0].code() == KafkaError.TOPIC_EXCEPTION, reports[0]
    cloud.assert_alive()

    got = ck_read_all(cloud.bootstrap, topic_name)
    assert [(r.offset, r.key, r.value) for r in got] == [(0, b"ro/obj", b"read only")]
    wait_indexed(cloud.bootstrap, topic_name, [1], timeout=5)
    plain = topic_name + ".plain"
    ck_create_topic(cloud.bootstrap, plain)
    (m,) = ck_produce(cloud.bootstrap, plain, [{"value": b"after"}])
    assert m.offset() == 0
