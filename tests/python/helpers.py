"""Shared helpers: condition waiting, and thin wrappers over the real clients
(kcat, confluent-kafka, kafka-python, aiokafka) used by several test modules."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from dataclasses import dataclass, field

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
# librdkafka logs (e.g. "Connect ... refused" while a test has the broker down) go through
# Python logging, so pytest captures them instead of spraying stderr.
RDKAFKA_LOG = logging.getLogger("rdkafka")
# RecordBatch attributes bits 0-2.
CODEC_ID = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def assert_batches_codec(batches, codec: str):
    """Stored batches carry the producer's codec. Clients (librdkafka, kafka-python,
    aiokafka) send a batch uncompressed when compressing would not make it smaller, so
    uncompressed batches may sit beside compressed ones; at least one must be compressed."""
    codecs = {b.codec for b in batches}
    assert batches, "no batches stored"
    if codec == "none":
        assert codecs == {0}, codecs
    else:
        assert CODEC_ID[codec] in codecs and codecs <= {0, CODEC_ID[codec]}, (
            f"stored codecs {codecs}, expected {CODEC_ID[codec]} ({codec})")


def wait_for(cond, timeout: float, interval: float = 0.05, what="condition"):
    """Polls `cond()` until it returns a truthy value (returned) or `timeout` seconds pass
    (AssertionError naming `what`; `what` may be a callable for a late, detailed message)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except AssertionError as e:  # conditions may assert to explain themselves
            last_exc = e
        if time.monotonic() >= deadline:
            desc = what() if callable(what) else what
            msg = f"timed out after {timeout}s waiting for {desc}"
            if last_exc is not None:
                msg += f" (last: {last_exc})"
            raise AssertionError(msg)
        time.sleep(interval)


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple = field(default=())  # tuple of (name:str, value:bytes)
    timestamp: int | None = None


# ---- certificates (openssl CLI) ------------------------------------------------------------


def make_certs(d, name: str = "", clients: tuple[str, ...] = ()):
    """A CA (`<name>ca.pem`) and a server leaf for 127.0.0.1/localhost, with distinct
    subjects (OpenSSL-based clients reject equal ones); plus one client certificate per
    name in `clients` (`<client>.pem`, `<client>.key`, CN = the name) signed by the CA.
    Returns (ca, leaf, key)."""
    from pathlib import Path
    d = Path(d)

    def run(*a):
        subprocess.run(a, check=True, capture_output=True, cwd=d)

    def sign(stem: str, cn: str, ext: str):
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{stem}.key",
            "-out", f"{stem}.csr", "-subj", f"/CN={cn}")
        (d / f"{stem}.ext").write_text(ext)
        run("openssl", "x509", "-req", "-in", f"{stem}.csr", "-CA", f"{name}ca.pem",
            "-CAkey", f"{name}ca.key", "-CAcreateserial", "-out", f"{stem}.pem", "-days", "2",
            "-extfile", f"{stem}.ext")

    # ECDSA P-256: key generation is instant (RSA 2048 took seconds per key here).
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}ca.key",
        "-out", f"{name}ca.pem", "-days", "2", "-subj", f"/CN=edge-cloud test CA {name}".rstrip())
    sign(f"{name}leaf", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for c in clients:
        sign(c, c, "extendedKeyUsage=clientAuth\n")
    return d / f"{name}ca.pem", d / f"{name}leaf.pem", d / f"{name}leaf.key"


# ---- kcat ------------------------------------------------------------------------------


def kcat(args: list[str], input: bytes | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    p = subprocess.run(
        ["kcat", *args], input=input, capture_output=True, timeout=timeout
    )
    if p.returncode != 0:
        raise AssertionError(
            f"kcat {' '.join(args)} exited {p.returncode}\nstdout: {p.stdout[-2000:]!r}\n"
            f"stderr: {p.stderr.decode(errors='replace')[-4000:]}"
        )
    return p


def kcat_produce(bootstrap: str, topic: str, lines: list[str], codec: str = "none",
                 key_delim: str | None = None, headers: list[str] = (), partition: int | None = None,
                 extra: list[str] = ()):
    args = ["-b", bootstrap, "-P", "-t", topic, "-X", f"compression.codec={codec}",
            "-X", "linger.ms=50"]
    if partition is not None:
        args += ["-p", str(partition)]
    if key_delim is not None:
        args += ["-K", key_delim]
    for h in headers:
        args += ["-H", h]
    args += list(extra)
    return kcat(args, input=("\n".join(lines) + "\n").encode())


def parse_kcat_headers(h) -> tuple:
    if h is None:
        return ()
    if isinstance(h, dict):
        return tuple((k, v.encode() if isinstance(v, str) else v) for k, v in h.items())
    # kcat 1.7 prints ["name", "value", ...]
    it = iter(h)
    return tuple((k, (v.encode() if isinstance(v, str) else v)) for k, v in zip(it, it))


def kcat_consume(bootstrap: str, topic: str, offset: str = "beginning", count: int | None = None,
                 partition: int | None = None, timeout: float = 30.0, extra: list[str] = ()) -> list[Rec]:
    """Consumes with -J until end of partition(s) (-e) or `count` messages."""
    args = ["-b", bootstrap, "-C", "-t", topic, "-o", offset, "-J", "-e", "-q"]
    if partition is not None:
        args += ["-p", str(partition)]
    if count is not None:
        args += ["-c", str(count)]
    args += list(extra)
    p = kcat(args, timeout=timeout)
    out = []
    for line in p.stdout.decode().splitlines():
        line = line.strip()
        if not line:
            continue
        d = json.loads(line)
        key = d.get("key")
        val = d.get("payload")
        out.append(Rec(
            partition=d["partition"], offset=d["offset"],
            key=None if key is None else key.encode(),
            value=None if val is None else val.encode(),
            headers=parse_kcat_headers(d.get("headers")),
            timestamp=d.get("ts"),
        ))
    return out


# ---- confluent-kafka ---------------------------------------------------------------------


def ck_admin(bootstrap: str, **conf):
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": bootstrap, "logger": RDKAFKA_LOG, **conf})


def ck_create_topic(bootstrap: str, name: str, partitions: int = 1, config: dict | None = None,
                    timeout: float = 20.0):
    from confluent_kafka.admin import NewTopic
    a = ck_admin(bootstrap)
    fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                   config=config or {})], operation_timeout=10)
    fs[name].result(timeout=timeout)
    wait_for(lambda: name in a.list_topics(timeout=5).topics
             and len(a.list_topics(timeout=5).topics[name].partitions) == partitions,
             timeout, what=f"topic {name} with {partitions} partitions in metadata")


def ck_partitions(bootstrap: str, topic: str, **conf) -> list[int]:
    a = ck_admin(bootstrap, **conf)
    md = a.list_topics(timeout=10)
    assert topic in md.topics, f"topic {topic} missing from metadata: {sorted(md.topics)[:20]}"
    t = md.topics[topic]
    assert t.error is None, f"metadata error for {topic}: {t.error}"
    return sorted(t.partitions)


def ck_producer(bootstrap: str, **conf):
    from confluent_kafka import Producer
    base = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "logger": RDKAFKA_LOG}
    base.update({k.replace("_", "."): v for k, v in conf.items()})
    return Producer(base)


def ck_produce(bootstrap: str, topic: str, records, codec: str = "none", timeout: float = 30.0,
               **conf) -> list:
    """records: iterable of dicts for Producer.produce (value=, key=, headers=, partition=,
    timestamp=). Returns the delivered messages in produce order; fails on any error."""
    p = ck_producer(bootstrap, **{"compression.codec": codec, **conf})
    results: dict[int, object] = {}
    errors = []

    def cb_for(i):
        def cb(err, msg):
            if err is not None:
                errors.append((i, err))
            else:
                results[i] = msg
        return cb

    n = 0
    for i, r in enumerate(records):
        while True:
            try:
                p.produce(topic, on_delivery=cb_for(i), **r)
                break
            except BufferError:
                p.poll(0.1)
        n += 1
        p.poll(0)
    remaining = p.flush(timeout)
    assert remaining == 0, f"{remaining} messages not delivered within {timeout}s"
    assert not errors, f"delivery errors: {errors[:5]}"
    assert len(results) == n
    return [results[i] for i in range(n)]


def ck_consumer(bootstrap: str, group: str = "pytest-reader", **conf):
    from confluent_kafka import Consumer
    base = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "enable.partition.eof": True, "logger": RDKAFKA_LOG}
    base.update(conf)
    return Consumer(base)


def ck_read_all(bootstrap: str, topic: str, partitions: list[int] | None = None,
                timeout: float = 30.0, start=None, conf: dict | None = None) -> list[Rec]:
    """Reads every partition of `topic` from `start` (default beginning) to its end
    (partition EOF) with assign(); no group membership. `conf`: extra client settings
    (e.g. security.protocol)."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
    conf = conf or {}
    if partitions is None:
        partitions = ck_partitions(bootstrap, topic, **conf)
    c = ck_consumer(bootstrap, **conf)
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING if start is None else start)
                  for p in partitions])
        eof: set[int] = set()
        out: list[Rec] = []
        deadline = time.monotonic() + timeout
        while len(eof) < len(partitions):
            assert time.monotonic() < deadline, (
                f"reading {topic} did not reach EOF on partitions "
                f"{sorted(set(partitions) - eof)} within {timeout}s ({len(out)} records read)")
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise AssertionError(f"consume error on {topic}: {m.error()}")
            eof.discard(m.partition())
            out.append(Rec(m.partition(), m.offset(), m.key(), m.value(),
                           tuple((k, v) for k, v in (m.headers() or [])), m.timestamp()[1]))
        return out
    finally:
        c.close()


def ck_watermarks(bootstrap: str, topic: str, partition: int = 0) -> tuple[int, int]:
    from confluent_kafka import TopicPartition
    c = ck_consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        c.close()


# ---- kafka-python ----------------------------------------------------------------------


def kp_read_all(bootstrap: str, topic: str, timeout: float = 30.0, **conf) -> list[Rec]:
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", request_timeout_ms=20000, **conf)
    try:
        parts = wait_for(lambda: c.partitions_for_topic(topic), 15,
                         what=f"kafka-python metadata for {topic}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out: list[Rec] = []
        deadline = time.monotonic() + timeout
        while any(c.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, (
                f"kafka-python did not reach end offsets {end} of {topic} in {timeout}s "
                f"(positions {[c.position(tp) for tp in tps]}, {len(out)} read)")
            for tp, msgs in c.poll(timeout_ms=200).items():
                for m in msgs:
                    out.append(Rec(m.partition, m.offset, m.key, m.value,
                                   tuple((k, v) for k, v in (m.headers or [])), m.timestamp))
        return out
    finally:
        c.close()


def kp_produce(bootstrap: str, topic: str, records, codec: str = "none", **conf) -> list:
    """records: dicts with value=, key=, headers=[(str, bytes)], partition=. Returns
    RecordMetadata in order."""
    from kafka import KafkaProducer
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                      compression_type=None if codec == "none" else codec, linger_ms=20, **conf)
    try:
        futs = [p.send(topic, **r) for r in records]
        p.flush(timeout=30)
        return [f.get(timeout=30) for f in futs]
    finally:
        p.close(timeout=10)


# ---- aiokafka --------------------------------------------------------------------------


def run_async(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def aio_produce(bootstrap: str, topic: str, records, codec: str = "none", **conf) -> list:
    from aiokafka import AIOKafkaProducer
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                         compression_type=None if codec == "none" else codec, linger_ms=20, **conf)
    await p.start()
    try:
        futs = [await p.send(topic, **r) for r in records]
        return [await f for f in futs]
    finally:
        await p.stop()


async def aio_read_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Rec]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    try:
        parts = None
        deadline = time.monotonic() + 15
        while not parts:
            assert time.monotonic() < deadline, f"aiokafka: no metadata for {topic}"
            # The consumer's own cluster view only tracks subscribed topics; ask directly.
            cluster = await c._client.fetch_all_metadata()
            parts = cluster.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out: list[Rec] = []
        deadline = time.monotonic() + timeout
        while True:
            positions = {tp: await c.position(tp) for tp in tps}
            if all(positions[tp] >= end[tp] for tp in tps):
                break
            assert time.monotonic() < deadline, (
                f"aiokafka did not reach end offsets {end} of {topic} in {timeout}s "
                f"(positions {positions}, {len(out)} read)")
            batch = await c.getmany(timeout_ms=200)
            for tp, msgs in batch.items():
                for m in msgs:
                    out.append(Rec(m.partition, m.offset, m.key, m.value,
                                   tuple((k, v) for k, v in (m.headers or [])), m.timestamp))
        return out
    finally:
        await c.stop()
