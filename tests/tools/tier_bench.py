#!/usr/bin/env python3
"""Reading a tiered topic against reading a persistent one, side by side in one run.

One cloud (started here, with its own `moto_server` as S3), two topics holding the same
records: `persistent` and `storage.mode=tiered` with `local.retention.bytes=0` (so all
but the newest segment moves to S3). Once the tiered topic's segments are uploaded, one
confluent-kafka consumer reads each topic from offset 0 to the end, `--rounds` times,
alternating: the first tiered read loads segments from S3 (moto, on this machine), later
ones come from the cache (memory tier sized to hold the data). Prints MB/s per read and
tiered / persistent.

    CLOUD_BIN=$T/cloud python3 tests/tools/tier_bench.py [--mb 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import s3_bench as sb  # noqa: E402  (moto, process helpers)

RECORD = 1024
SEGMENT = 16 << 20


def start_cloud(workdir: Path, endpoint: str, bucket: str, memory_bytes: int):
    """Returns (process, bootstrap, config path)."""
    p, bootstrap, cfg, _ = sb.start_cloud_with(workdir, f"""data_dir: "{workdir / 'data'}"
kafka:
  listen: "127.0.0.1:0"
mqtt:
  listen: null
storage:
  tiered:
    target: "s3://{bucket}/tier"
    local_bytes: 0
    segment_bytes: {SEGMENT}
    check_interval_ms: 200
s3:
  endpoint: "{endpoint}"
  region: "{sb.REGION}"
  access_key_id: "testing"
  secret_access_key: "testing"
  allow_http: true
  cache:
    memory_bytes: {memory_bytes}
    disk_bytes: 0
""")
    return p, bootstrap, cfg


def produce(bootstrap: str, topic: str, n: int):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                  "batch.size": 1 << 20, "compression.type": "none"})
    value = os.urandom(RECORD)
    for i in range(n):
        while True:
            try:
                p.produce(topic, value, key=str(i).encode())
                break
            except BufferError:
                p.poll(0.05)
    p.flush(120)


def read_all(bootstrap: str, topic: str, n: int) -> float:
    """MB/s reading offsets 0..n from a fresh consumer."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "tier-bench",
                  "enable.auto.commit": False, "fetch.max.bytes": 64 << 20,
                  "max.partition.fetch.bytes": 16 << 20})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got, size, t0 = 0, 0, time.monotonic()
        while got < n:
            if time.monotonic() - t0 > 300:
                raise SystemExit(f"{topic}: {got} of {n} records in 300 s")
            for m in c.consume(min(10_000, n - got), timeout=1.0):
                if m.error():
                    continue
                got += 1
                size += len(m.value())
        return size / 1e6 / (time.monotonic() - t0)
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=128, help="MB of 1 KiB records per topic")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    atexit.register(sb._kill_children)
    signal.signal(signal.SIGTERM, sb._on_signal)
    n = args.mb * 1_000_000 // RECORD
    with tempfile.TemporaryDirectory(prefix="tier-bench-") as tmp:
        tmp = Path(tmp)
        _, endpoint, moto_cmd = sb.start_moto(tmp)
        import boto3
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=sb.REGION,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="tier-bench")
        _, bootstrap, cfg = start_cloud(tmp / "cloud", endpoint, "tier-bench",
                                        memory_bytes=4 * args.mb * 1_000_000)
        print(f"S3: {' '.join(moto_cmd)}; cloud config {cfg}; {n} records of {RECORD} B "
              f"per topic; segments of {SEGMENT} B; MB = 10^6 B")
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for name, conf in (("persistent", {}),
                           ("tiered", {"storage.mode": "tiered",
                                       "local.retention.bytes": "0"})):
            admin.create_topics([NewTopic(name, 1, 1, config=conf)])[name].result(30)
            t0 = time.monotonic()
            produce(bootstrap, name, n)
            print(f"  produced {name} in {time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
        total = n * RECORD
        while True:
            objs = s3.list_objects_v2(Bucket="tier-bench").get("Contents", [])
            up = sum(o["Size"] for o in objs)
            if up >= total - 2 * SEGMENT:
                break
            if time.monotonic() - t0 > 300:
                raise SystemExit(f"only {up} bytes tiered after 300 s")
            time.sleep(0.2)  # polling interval of the bucket listing
        print(f"  tiered {len(objs)} segments, {up / 1e6:.1f} MB, in "
              f"{time.monotonic() - t0:.1f} s after the last produce")
        rows = []
        for r in range(args.rounds):
            p = read_all(bootstrap, "persistent", n)
            t = read_all(bootstrap, "tiered", n)
            rows.append((p, t))
            print(f"  round {r + 1}: persistent {p:.1f} MB/s, tiered {t:.1f} MB/s "
                  f"({'from S3' if r == 0 else 'from the cache'}), ratio {t / p:.2f}")
        if len(rows) > 1:
            warm = rows[1:]
            p = statistics.median(x for x, _ in warm)
            t = statistics.median(y for _, y in warm)
            print(f"rounds 2+: median persistent {p:.1f}, tiered {t:.1f} MB/s, "
                  f"ratio {t / p:.2f}")
        print(f"round 1 (tiered from S3): ratio {rows[0][1] / rows[0][0]:.2f}")


if __name__ == "__main__":
    main()
