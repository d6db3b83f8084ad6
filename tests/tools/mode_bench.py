#!/usr/bin/env python3
"""What each storage mode costs an acks=all producer, side by side in one run.

Starts the cloud binary (CLOUD_BIN) on 127.0.0.1:0 with the default `storage.sync: group`,
creates one topic per mode (persistent, hybrid, memory), then, alternating between the
modes for `--rounds` rounds, sends `--records` records of `--size` bytes one at a time
with an acks=all confluent-kafka producer (each waits for its answer: the latency an
acknowledgement costs) and a burst of the same records (linger 5 ms: throughput). Prints
medians over the rounds and the ratio to persistent.

    CLOUD_BIN=$T/cloud python3 tests/tools/mode_bench.py [--records 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_bench import start_cloud  # noqa: E402

MODES = ("persistent", "hybrid", "memory")


def one_at_a_time(p, topic, n, payload):
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        p.produce(topic, payload)
        p.flush(30)
        lat.append(time.perf_counter() - t)
    lat.sort()
    return n / sum(lat), lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3


def burst(bootstrap, topic, n, payload):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "enable.idempotence": True})
    t = time.perf_counter()
    for _ in range(n):
        while True:
            try:
                p.produce(topic, payload)
                break
            except BufferError:
                p.poll(0.01)
    p.flush(60)
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    payload = b"x" * args.size
    seq = {m: [] for m in MODES}
    bursts = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as d:
        proc, bootstrap = start_cloud(Path(d))
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap})
            fs = admin.create_topics([NewTopic(f"mode.{m}", num_partitions=1,
                                               replication_factor=1,
                                               config={"storage.mode": m}) for m in MODES])
            for f in fs.values():
                f.result(20)
            p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
            for _ in range(args.rounds):
                for m in MODES:
                    seq[m].append(one_at_a_time(p, f"mode.{m}", args.records, payload))
                    bursts[m].append(burst(bootstrap, f"mode.{m}", args.records * 10, payload))
        finally:
            proc.kill()
            proc.wait()
    print(f"acks=all, {args.size} B records, sync: group, medians of {args.rounds} rounds")
    base = statistics.median(r[0] for r in seq["persistent"])
    base_b = statistics.median(bursts["persistent"])
    for m in MODES:
        rate = statistics.median(r[0] for r in seq[m])
        p50 = statistics.median(r[1] for r in seq[m])
        p99 = statistics.median(r[2] for r in seq[m])
        b = statistics.median(bursts[m])
        print(f"  {m:10}: one at a time {rate:8,.0f} records/s (p50 {p50:.2f} ms, p99 "
              f"{p99:.2f} ms) {rate / base:5.2f} x | burst {b:9,.0f} records/s "
              f"{b / base_b:5.2f} x")


if __name__ == "__main__":
    sys.exit(main())
