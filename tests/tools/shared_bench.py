#!/usr/bin/env python3
"""Shared groups against a plain consumer group on one partition, side by side in one run.

A fleet of consumers reading one partition: in a plain Kafka group one member gets the
partition and the others idle; in a shared group (`$shared/<name>`) every member gets it
and each batch goes to one of them. Each row starts the cloud binary (CLOUD_BIN) on
127.0.0.1:0, produces `--records` records of `--size` bytes to a one-partition topic
(librdkafka batches of 100 records), then starts `--members` confluent-kafka consumers,
each its own process, committing asynchronously after every message, and times from the
first record received to the last; `--work-us` of CPU per record stands for what a
worker does with it. Prints records/s for both groups and the ratio.

    CLOUD_BIN=$T/cloud python3 tests/tools/shared_bench.py [--members 4] [--work-us 200]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LISTEN_RE = re.compile(r"^listening kafka (127\.0\.0\.1:\d+)\s*$")


def start_cloud(workdir: Path):
    cfg = workdir / "cloud.yaml"
    cfg.write_text(
        f'data_dir: "{workdir}/data"\n'
        'kafka:\n  listen: "127.0.0.1:0"\n'
        'mqtt:\n  listen: "127.0.0.1:0"\n'
        'groups:\n  initial_rebalance_delay_ms: 0\n')
    binary = os.environ.get("CLOUD_BIN",
                            str(Path.home() / ".cache/edge-cloud-sync/target/debug/cloud"))
    proc = subprocess.Popen([binary, "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        m = LISTEN_RE.match(line.strip())
        if m:
            return proc, m.group(1)
    raise SystemExit("the cloud did not start")


def produce(bootstrap, topic, n, size):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(20)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 100,
                  "acks": "all"})
    payload = b"x" * size
    for i in range(n):
        while True:
            try:
                p.produce(topic, payload, key=str(i).encode())
                break
            except BufferError:
                p.poll(0.05)
    p.flush(60)


def member(bootstrap, group, topic, work_us, done, total, first, last, ready):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "client.id": f"bench-{os.getpid()}"})
    c.subscribe([topic])
    with ready.get_lock():
        ready.value += 1
    while done.value < total:
        m = c.poll(0.1)
        if m is None or m.error():
            continue
        now = time.monotonic()
        with first.get_lock():
            if first.value == 0.0:
                first.value = now
        spin_until = time.perf_counter() + work_us / 1e6
        while time.perf_counter() < spin_until:
            pass
        c.commit(message=m, asynchronous=True)
        with done.get_lock():
            done.value += 1
            if done.value >= total:
                last.value = time.monotonic()
    c.close()


def run_row(bootstrap, group, topic, members, work_us, total):
    done = mp.Value("q", 0)
    ready = mp.Value("q", 0)
    first = mp.Value("d", 0.0)
    last = mp.Value("d", 0.0)
    procs = [mp.Process(target=member, args=(bootstrap, group, topic, work_us, done, total,
                                             first, last, ready))
             for _ in range(members)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 600
    while done.value < total and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
    if done.value < total:
        raise SystemExit(f"{group}: only {done.value} of {total} records in 600 s")
    return total / (last.value - first.value)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--work-us", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        proc, bootstrap = start_cloud(Path(d))
        try:
            topic = "bench.shared"
            produce(bootstrap, topic, args.records, args.size)
            plain = run_row(bootstrap, "plain", topic, args.members, args.work_us,
                            args.records)
            shared = run_row(bootstrap, "$shared/bench", topic, args.members, args.work_us,
                             args.records)
        finally:
            proc.kill()
            proc.wait()
    print(f"one partition, {args.records} records of {args.size} B, {args.members} members, "
          f"{args.work_us} us of work per record")
    print(f"  plain group  : {plain:10,.0f} records/s (one member has the partition)")
    print(f"  shared group : {shared:10,.0f} records/s")
    print(f"  ratio        : {shared / plain:.2f} x")


if __name__ == "__main__":
    sys.exit(main())
