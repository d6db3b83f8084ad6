"""Fixtures and helpers for the edge system tests.

`Edge` runs the real `edge` binary (env EDGE_BIN, else
$HOME/.cache/edge-cloud-sync/target/debug/edge) with a YAML config whose listeners bind
127.0.0.1:0, and reads `listening mqtt-v4|mqtt-v5|metrics 127.0.0.1:PORT` from stdout.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import deep_merge, to_yaml

DEFAULT_BIN = Path.home() / ".cache/edge-cloud-sync/target/debug/edge"
LISTEN_RE = re.compile(r"^listening (mqtt-v4|mqtt-v5|metrics) (127\.0\.0\.1:(\d+))\s*$")


def edge_binary() -> Path:
    return Path(os.environ.get("EDGE_BIN", str(DEFAULT_BIN)))


def free_port() -> int:
    """A port that was free a moment ago (for a peer that must keep its port on restart)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Edge:
    """One edge process, restartable on the same data dir."""

    def __init__(self, workdir: Path, overrides: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "edge.yaml"
        self.stderr_path = self.workdir / "edge.stderr.log"
        self.config = deep_merge(
            {
                "edge_id": "edge-test",
                "data_dir": str(self.workdir / "data"),
                "mqtt": {"v4_listen": "127.0.0.1:0", "v5_listen": "127.0.0.1:0"},
                "metrics": {"listen": "127.0.0.1:0"},
                "cloud": {"backoff_initial_ms": 50, "backoff_max_ms": 500},
            },
            overrides,
        )
        self.proc: subprocess.Popen | None = None
        self.addrs: dict[str, tuple[str, int]] = {}
        self.stdout_lines: list[str] = []

    def start(self, timeout: float = 30.0) -> "Edge":
        binary = edge_binary()
        if not binary.exists():
            raise AssertionError(f"edge binary not found at {binary} (set EDGE_BIN or build it)")
        self.config_path.write_text(to_yaml(self.config) + "\n")
        err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [str(binary), "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, cwd=str(self.workdir),
        )
        err.close()
        lines: queue.Queue = queue.Queue()
        proc = self.proc

        def pump():
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                self.stdout_lines.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name="edge-stdout").start()
        self.addrs = {}
        want = {"mqtt-v4", "mqtt-v5", "metrics"}
        deadline = time.monotonic() + timeout
        while not want <= self.addrs.keys():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"edge did not print its listeners\n{self.stderr_tail()}"
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            assert line is not None, f"edge exited with {proc.wait(5)}\n{self.stderr_tail()}"
            m = LISTEN_RE.match(line)
            if m:
                self.addrs[m.group(1)] = ("127.0.0.1", int(m.group(3)))
        return self

    @property
    def v4(self) -> tuple[str, int]:
        return self.addrs["mqtt-v4"]

    @property
    def v5(self) -> tuple[str, int]:
        return self.addrs["mqtt-v5"]

    def kill(self):
        assert self.proc is not None and self.proc.poll() is None, self.stderr_tail()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def metrics(self) -> dict[str, float]:
        host, port = self.addrs["metrics"]
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stderr_tail(self, n: int = 40) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        return f"--- edge stderr tail ({self.stderr_path}) ---\n" + "\n".join(lines[-n:])


@pytest.fixture
def edge_factory(tmp_path):
    made: list[Edge] = []

    def make(overrides: dict | None = None, name: str = "edge", start: bool = True) -> Edge:
        e = Edge(tmp_path / name, overrides)
        made.append(e)
        if start:
            e.start()
        return e

    yield make
    for e in made:
        e.stop()


def dead_bootstrap() -> str:
    """An address nothing listens on: the uplink stays down."""
    return f"127.0.0.1:{free_port()}"


class Publisher:
    """A paho-mqtt client that records which publishes were acknowledged."""

    def __init__(self, addr: tuple[str, int], client_id: str, version: int = 4):
        import paho.mqtt.client as mqtt
        proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
        self.acked: set[int] = set()
        self.ack_count = 0
        self.sent = 0
        self.lock = threading.Lock()
        self.c.on_publish = self._on_publish
        self.mids: dict[int, tuple[str, bytes]] = {}
        self.connected = threading.Event()
        self.c.on_connect = lambda *a, **k: self.connected.set()
        self.c.max_inflight_messages_set(50)
        self.c.max_queued_messages_set(0)
        self.c.connect(addr[0], addr[1], keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(10), "mqtt connect failed"

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None):
        with self.lock:
            self.acked.add(mid)
            self.ack_count += 1

    def publish(self, topic: str, payload: bytes, qos: int = 1, properties=None) -> int:
        info = self.c.publish(topic, payload, qos=qos, properties=properties)
        self.sent += 1
        self.mids[info.mid] = (topic, payload)
        return info.mid

    def acked_messages(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return [self.mids[m] for m in sorted(self.acked) if m in self.mids]

    def close(self):
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()
