#!/usr/bin/env python3
"""Edge figures for the README: ingest rate (QoS 1, paho-mqtt publishers), peak RSS,
backlog build-up with the uplink down, drain rate to the cloud, zstd ratio, disk use
before/after the drain.

    CLOUD_BIN=... EDGE_BIN=... python3 edge/bench/measure.py [--backlog-mb 200] [--size 1024]

Prints one line per figure. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests" / "python"))

from conftest import Cloud  # noqa: E402
from edge_fixtures import Edge, Publisher, free_port  # noqa: E402


def cpu_s(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def publish_n(addr, n: int, size: int, publishers: int, sync: str) -> tuple[float, int]:
    payload = os.urandom(size // 2).hex().encode()[:size]
    per = n // publishers
    pubs = [Publisher(addr, f"bench-{sync}-{i}-{time.monotonic_ns()}") for i in range(publishers)]
    t0 = time.monotonic()

    def run(p: Publisher, i: int):
        for k in range(per):
            while p.sent - p.ack_count > 200:
                time.sleep(0.0005)
            p.c.publish(f"bench/{i}", payload, qos=1)
            p.sent += 1

    threads = [threading.Thread(target=run, args=(p, i)) for i, p in enumerate(pubs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while sum(p.ack_count for p in pubs) < per * publishers:
        time.sleep(0.01)
    dt = time.monotonic() - t0
    for p in pubs:
        p.close()
    return dt, per * publishers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backlog-mb", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--drain-only", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    port = free_port()
    for sync in () if args.drain_only else ("always", "interval"):
        edge = Edge(work / f"edge-ingest-{sync}", {
            "cloud": {"bootstrap": f"127.0.0.1:{free_port()}"},
            "buffer": {"sync": sync},
        }).start()
        for size in (100, 65536):
            n = 20000 if size == 100 else 2000
            dt, n = publish_n(edge.v4, n, size, args.publishers, sync)
            print(f"ingest sync={sync} payload={size}B publishers={args.publishers}: "
                  f"{n / dt:,.0f} msgs/s ({n * size / dt / 1e6:.1f} MB/s), rss={edge.rss_kb() / 1024:.1f} MB")
        edge.stop()

    # Backlog with the uplink down, then drain into the cloud.
    edge = Edge(work / "edge-drain", {
        "cloud": {"bootstrap": f"127.0.0.1:{port}"},
        "buffer": {"sync": "interval", "quota_bytes": 4 << 30},
    }).start()
    n = args.backlog_mb * (1 << 20) // args.size
    dt, n = publish_n(edge.v4, n, args.size, args.publishers, "backlog")
    m = edge.metrics()
    data = Path(edge.config["data_dir"])
    disk_before = du(data)
    print(f"backlog: {n:,} x {args.size} B records in {dt:.1f}s; backlog_bytes={m['edge_backlog_bytes'] / 1e6:.1f} MB, "
          f"disk={disk_before / 1e6:.1f} MB, rss={edge.rss_kb() / 1024:.1f} MB")
    cloud = Cloud(work / "cloud", {"kafka": {"listen": f"127.0.0.1:{port}"}}).start()
    t0 = time.monotonic()
    e_cpu, c_cpu = cpu_s(edge.proc.pid), cpu_s(cloud.proc.pid)
    peak_rss = 0
    while edge.metrics().get("edge_backlog_records", 1) > 0:
        peak_rss = max(peak_rss, edge.rss_kb())
        time.sleep(0.2)
    dt = time.monotonic() - t0
    print(f"drain cpu: edge {cpu_s(edge.proc.pid) - e_cpu:.1f}s, cloud {cpu_s(cloud.proc.pid) - c_cpu:.1f}s in {dt:.1f}s wall")
    cloud_disk = du(cloud.data_dir)
    print(f"drain: {n * args.size / dt / 1e6:.1f} MB/s payload ({n / dt:,.0f} records/s) over loopback, "
          f"peak edge rss={peak_rss / 1024:.1f} MB")
    print(f"cloud data dir after drain: {cloud_disk / 1e6:.1f} MB for {n * args.size / 1e6:.1f} MB of payload "
          f"(zstd batches stored as produced)")
    # Space reclaimed after the drain: sled compacts lazily; measure after a restart.
    edge.stop()
    edge.start()
    time.sleep(1.0)
    print(f"edge disk: before drain {disk_before / 1e6:.1f} MB, after drain+restart {du(data) / 1e6:.1f} MB")
    edge.stop()
    cloud.stop()


if __name__ == "__main__":
    main()
