#!/usr/bin/env python3
"""An S3-backed topic against reading the bucket with boto3, side by side in one run.

What a training job does without us, each epoch: list the prefix and GET every object
in key order with boto3, single-threaded ("boto3 serial") and with a ThreadPoolExecutor
of `--threads` workers ("boto3 N threads", the usual parallel reader). What it does with
us: one confluent-kafka consumer reads the S3 topic (`source` = s3://bucket/prefix,
`source.format` = object) from offset 0 to the end each epoch (assign, no group).

The script starts its own `moto_server` (S3) and cloud binary (CLOUD_BIN, else
$CARGO_TARGET_DIR/debug/cloud, else ~/.cache/edge-cloud-sync/target/debug/cloud), both on
127.0.0.1 free ports, uploads `--objects` random objects of `--size` bytes, and runs:

  run 1  cache large enough for the data (memory tier = max(256 MiB, 2 x dataset)):
         MB/s per epoch for the three readers, and cloud / best boto3;
  run 2  a fresh cloud whose cache is smaller than the data (memory tier = 50 % of the
         dataset, no disk tier): the topic's MB/s per epoch (epoch 2+ show what the
         eviction policy keeps), against run 1's best boto3 median.

MB = 10^6 bytes. moto runs on this machine, so a GET costs far less than on real S3
(no network round trip of tens of ms): the boto3 rates here are an upper bound.

    CLOUD_BIN=$T/cloud python3 tests/tools/s3_bench.py [--objects 1000] [--size 65536] [--epochs 3]
"""

from __future__ import annotations

import argparse
import atexit
import os
import queue
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LISTEN_RE = re.compile(r"^listening kafka (127\.0\.0\.1:\d+)\s*$")
REGION = "us-east-1"
MB = 1e6
CONSUMER_CONF = {"enable.auto.commit": False, "auto.offset.reset": "earliest",
                 "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 8 << 20}

_children: list[subprocess.Popen] = []


# ---- processes -----------------------------------------------------------------------


def _kill_children():
    """Kills what this script started (each child leads its own process group)."""
    for p in _children:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)  # unwinds: finally blocks and atexit kill the children


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    _children.append(p)
    return p


def stop(p: subprocess.Popen):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def start_moto(workdir: Path, timeout: float = 30.0):
    """Returns (process, endpoint, command line)."""
    log = workdir / "moto.log"
    for _ in range(3):
        port = free_port()
        cmd = ["moto_server", "-H", "127.0.0.1", "-p", str(port)]
        with open(log, "ab") as f:
            p = spawn(cmd, stdout=f, stderr=subprocess.STDOUT)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen(endpoint + "/", timeout=2) as r:
                    if r.status == 200:
                        return p, endpoint, cmd
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)  # readiness polling interval
        stop(p)
    raise SystemExit(f"moto_server did not start\n{tail(log)}")


def cloud_binary() -> Path:
    if os.environ.get("CLOUD_BIN"):
        return Path(os.environ["CLOUD_BIN"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "debug/cloud"
    return Path.home() / ".cache/edge-cloud-sync/target/debug/cloud"


def cloud_yaml(data_dir: Path, endpoint: str, cache: dict) -> str:
    lines = [f'data_dir: "{data_dir}"',
             'kafka:\n  listen: "127.0.0.1:0"',
             'mqtt:\n  listen: "127.0.0.1:0"',
             'groups:\n  initial_rebalance_delay_ms: 0',
             "s3:",
             f'  endpoint: "{endpoint}"',
             f'  region: "{REGION}"',
             '  access_key_id: "testing"',
             '  secret_access_key: "testing"',
             "  allow_http: true",
             "  refresh_ms: 60000",
             "  cache:"]
    lines += [f"    {k}: {v}" for k, v in cache.items()]
    return "\n".join(lines) + "\n"


def start_cloud(workdir: Path, endpoint: str, cache: dict, timeout: float = 30.0):
    """Returns (process, bootstrap, config path, stderr log path)."""
    return start_cloud_with(workdir, cloud_yaml(workdir / "data", endpoint, cache), timeout)


def start_cloud_with(workdir: Path, config: str, timeout: float = 30.0):
    """Starts the cloud on `config` (YAML text) in `workdir`; returns (process,
    bootstrap, config path, stderr log path)."""
    binary = cloud_binary()
    if not binary.exists():
        raise SystemExit(f"cloud binary not found at {binary} (set CLOUD_BIN)")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "cloud.yaml"
    cfg.write_text(config)
    log = workdir / "cloud.stderr.log"
    with open(log, "ab") as err:
        p = spawn([str(binary), "--config", str(cfg)], stdout=subprocess.PIPE, stderr=err,
                  env={**os.environ, "NO_COLOR": "1"})
    lines: queue.Queue = queue.Queue()

    def pump():  # keeps draining stdout so the cloud never blocks on a full pipe
        for raw in p.stdout:
            lines.put(raw.decode(errors="replace").strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        m = LISTEN_RE.match(line)
        if m:
            return p, m.group(1), cfg, log
    stop(p)
    raise SystemExit(f"the cloud did not start (exit {p.poll()})\n{tail(log)}")


# ---- data and readers ----------------------------------------------------------------


def s3_client(endpoint: str, threads: int):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(s3={"addressing_style": "path"},
                                      max_pool_connections=max(10, threads * 2),
                                      connect_timeout=10, read_timeout=60,
                                      retries={"max_attempts": 3}))


def upload(s3, bucket: str, prefix: str, n: int, size: int, threads: int) -> list[str]:
    s3.create_bucket(Bucket=bucket)
    keys = [f"{prefix}/{i:08d}.bin" for i in range(n)]
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=os.urandom(size)), keys))
    return keys


def list_keys(s3, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys  # S3 lists in key order


def boto3_epoch(s3, bucket: str, prefix: str, threads: int) -> tuple[int, int, float]:
    """(objects, bytes, seconds): list, then GET every object in key order."""
    t0 = time.perf_counter()
    keys = list_keys(s3, bucket, prefix)

    def get(k):
        return len(s3.get_object(Bucket=bucket, Key=k)["Body"].read())

    if threads <= 1:
        sizes = [get(k) for k in keys]
    else:
        with ThreadPoolExecutor(threads) as ex:
            sizes = list(ex.map(get, keys))
    return len(keys), sum(sizes), time.perf_counter() - t0


def wait_indexed(bootstrap: str, topic: str, partitions: int, n: int, timeout: float) -> float:
    """Seconds until the partitions' high watermarks add up to n."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "s3-bench-watch"})
    t0 = time.perf_counter()
    try:
        while True:
            hw = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                  for p in range(partitions)]
            if sum(hw) >= n:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"{topic}: indexed {hw} (sum {sum(hw)}) of {n} in {timeout}s")
            time.sleep(0.05)  # polling interval of the watermark check
    finally:
        c.close()


def cloud_epoch(bootstrap: str, topic: str, partitions: int, keys: list[str],
                timeout: float) -> tuple[int, int, float]:
    """(records, bytes, seconds): one consumer reads every partition from offset 0 until
    it has every record. Checks that partition p holds keys[p::partitions] in order."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "s3-bench-reader",
                  **CONSUMER_CONF})
    got: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    nbytes = count = 0
    n = len(keys)
    try:
        t0 = time.perf_counter()
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        while count < n:
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"cloud epoch: {count} of {n} records in {timeout}s")
            # consume() returns at num_messages or at the timeout: ask for no more than
            # what is left, or the last call would idle out its timeout.
            for m in c.consume(num_messages=min(1000, n - count), timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise SystemExit(f"consume error: {m.error()}")
                got[m.partition()].append(m.key())
                nbytes += len(m.value() or b"")
                count += 1
        secs = time.perf_counter() - t0
    finally:
        c.close()
    for p in range(partitions):
        want = [k.encode() for k in keys[p::partitions]]
        if got[p] != want:
            raise SystemExit(f"partition {p}: keys out of order or missing "
                             f"({len(got[p])} read, {len(want)} expected)")
    return count, nbytes, secs


def rate(objects: int, nbytes: int, secs: float, want_objects: int, want_bytes: int,
         who: str) -> float:
    if objects != want_objects or nbytes != want_bytes:
        raise SystemExit(f"{who}: read {objects} objects / {nbytes} bytes, expected "
                         f"{want_objects} / {want_bytes}")
    return nbytes / MB / secs


# ---- runs ----------------------------------------------------------------------------


def create_topic(bootstrap: str, topic: str, partitions: int, source: str):
    from confluent_kafka.admin import AdminClient, NewTopic
    a = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})  # no info chatter
    config = {"source": source, "source.format": "object"}
    a.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                              config=config)], operation_timeout=30)[topic].result(60)
    return config


def run(label: str, workdir: Path, endpoint: str, cache: dict, s3, bucket: str, prefix: str,
        keys: list[str], args, with_peer: bool):
    total = len(keys) * args.size
    proc, bootstrap, cfg, log = start_cloud(workdir, endpoint, cache)
    try:
        topic = f"bench.s3.{label}"
        source = f"s3://{bucket}/{prefix}"
        config = create_topic(bootstrap, topic, args.partitions, source)
        index_s = wait_indexed(bootstrap, topic, args.partitions, len(keys), args.epoch_timeout)
        print(f"\n== {label}: cloud {shlex.join([str(cloud_binary()), '--config', str(cfg)])}")
        print("   config:\n" + "".join(f"     {line}\n" for line in cfg.read_text().splitlines()),
              end="")
        print(f"   topic {topic}: {args.partitions} partition(s), config {config}")
        print(f"   consumer: {CONSUMER_CONF}")
        print(f"   indexed {len(keys)} objects in {index_s:.2f} s")
        rows = []
        for epoch in range(1, args.epochs + 1):
            row = {}
            if with_peer:
                row["serial"] = rate(*boto3_epoch(s3, bucket, prefix, 1), len(keys), total,
                                     "boto3 serial")
                row["threads"] = rate(*boto3_epoch(s3, bucket, prefix, args.threads),
                                      len(keys), total, f"boto3 {args.threads} threads")
            row["cloud"] = rate(*cloud_epoch(bootstrap, topic, args.partitions, keys,
                                             args.epoch_timeout), len(keys), total, "cloud")
            if proc.poll() is not None:
                raise SystemExit(f"the cloud exited ({proc.returncode})\n{tail(log)}")
            rows.append(row)
            done = ", ".join(f"{k} {v:.1f} MB/s" for k, v in row.items())
            print(f"   epoch {epoch} done: {done}", flush=True)
        return rows
    except SystemExit:
        print(f"cloud stderr tail ({log}):\n{tail(log)}", file=sys.stderr)
        raise
    finally:
        stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64 * 1024, help="bytes per object")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8, help="the parallel boto3 reader's pool")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--epoch-timeout", type=float, default=600.0, help="seconds")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    args = ap.parse_args()
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)
    atexit.register(_kill_children)

    total = args.objects * args.size
    workdir = Path(tempfile.mkdtemp(prefix="s3-bench-"))
    try:
        print(f"{shlex.join([sys.executable, *sys.argv])}  (params {vars(args)})")
        moto, endpoint, moto_cmd = start_moto(workdir)
        print(f"S3: {shlex.join(moto_cmd)} (log {workdir / 'moto.log'})")
        s3 = s3_client(endpoint, args.threads)
        bucket, prefix = "s3-bench", "train"
        t = time.perf_counter()
        keys = upload(s3, bucket, prefix, args.objects, args.size, args.threads)
        print(f"data: {args.objects} objects x {args.size} B = {total / MB:.1f} MB in "
              f"s3://{bucket}/{prefix}/, uploaded in {time.perf_counter() - t:.1f} s; "
              f"{args.epochs} epochs; MB = 10^6 B", flush=True)

        big = {"memory_bytes": max(256 << 20, 2 * total), "disk_bytes": 0}
        small = {"memory_bytes": total // 2, "disk_bytes": 0}
        rows1 = run("fits", workdir / "cloud-fits", endpoint, big, s3, bucket, prefix, keys,
                    args, with_peer=True)
        rows2 = run("half", workdir / "cloud-half", endpoint, small, s3, bucket, prefix, keys,
                    args, with_peer=False)
        stop(moto)
    finally:
        _kill_children()
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)

    tn = f"boto3 {args.threads} thr"
    print(f"\nrun 1: cache {big} (the data fits in memory)")
    print(f"  {'epoch':>6} {'boto3 serial':>13} {tn:>13} {'cloud topic':>13} {'cloud/best':>11}")
    for i, r in enumerate(rows1, 1):
        best = max(r["serial"], r["threads"])
        print(f"  {i:>6} {r['serial']:>13.1f} {r['threads']:>13.1f} {r['cloud']:>13.1f} "
              f"{r['cloud'] / best:>10.2f}x")
    med = {k: statistics.median(r[k] for r in rows1) for k in ("serial", "threads", "cloud")}
    best_med = max(med["serial"], med["threads"])
    print(f"  {'median':>6} {med['serial']:>13.1f} {med['threads']:>13.1f} {med['cloud']:>13.1f} "
          f"{med['cloud'] / best_med:>10.2f}x")
    print(f"\nrun 2: cache {small} (half the data; no disk tier)")
    print(f"  {'epoch':>6} {'cloud topic':>13} {'vs best boto3 median (run 1)':>30}")
    for i, r in enumerate(rows2, 1):
        print(f"  {i:>6} {r['cloud']:>13.1f} {r['cloud'] / best_med:>29.2f}x")
    if len(rows2) > 1:
        later = statistics.median(r["cloud"] for r in rows2[1:])
        print(f"  epochs 2+ median {later:.1f} MB/s = {later / rows2[0]['cloud']:.2f}x epoch 1")
    print("rates in MB/s (10^6 B/s), each reader timed from its first request (list / assign) "
          "to its last byte")


if __name__ == "__main__":
    sys.exit(main())
