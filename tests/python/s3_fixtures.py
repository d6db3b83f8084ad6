"""S3 for the system tests: a `moto_server` (PyPI `moto[server]`) on 127.0.0.1, a boto3
client for it, a fresh bucket per test, and Kafka helpers the S3 tests share
(`test_s3_topics.py`, `test_tiered_topics.py`). Import the fixtures into a test module
(`from s3_fixtures import bucket, moto, s3  # noqa: F401`).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from helpers import Rec

REGION = "us-east-1"
MOTO_START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """`moto_server -H 127.0.0.1 -p PORT` on a port found free just before; started again
    on another port if it loses that port to someone else before binding it."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.log_path = self.workdir / "moto.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._log = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, attempts: int = 3) -> "MotoServer":
        for _ in range(attempts):
            self.port = free_port()
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                ["moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True)
            if self._wait_answering():
                return self
            self.stop()
        raise AssertionError(f"moto_server did not start\n{self.log_tail()}")

    def _wait_answering(self) -> bool:
        deadline = time.monotonic() + MOTO_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # exited (e.g. the port was taken meanwhile)
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)  # polling interval of the readiness check
        return False

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return f"--- moto log tail ({self.log_path}) ---\n" + "\n".join(lines[-n:])


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    m = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield m
    m.stop()


@pytest.fixture
def s3(moto):
    return moto.client()


@pytest.fixture
def bucket(s3, request):
    """A fresh, empty bucket named after the test."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    name = f"b-{slug}-{uuid.uuid4().hex[:8]}".replace("--", "-")
    s3.create_bucket(Bucket=name)
    return name


def expect_invalid_config(admin, topic: str, config: dict):
    fs = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                       config=config)], operation_timeout=10)
    with pytest.raises(KafkaException) as ei:
        fs[topic].result(timeout=30)
    err = ei.value.args[0]
    assert err.code() == KafkaError.INVALID_CONFIG, f"{config}: {err}"
    assert topic not in admin.list_topics(timeout=10).topics, f"{topic} created by {config}"


def poll_records(c, n: int, timeout: float, what: str) -> list[Rec]:
    """Polls `c` until it returned `n` records (partition-EOF events are ignored)."""
    out: list[Rec] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, (
            f"{what}: got {len(out)} of {n} records in {timeout}s: "
            f"{[(r.partition, r.offset, r.key) for r in out]}")
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"{what}: consume error {m.error()}")
        out.append(Rec(m.partition(), m.offset(), m.key(), m.value(),
                       tuple((k, v) for k, v in (m.headers() or [])), m.timestamp()[1]))
    return out
