"""Fixtures for the cloud system tests.

`Cloud` runs the real `cloud` binary (env CLOUD_BIN, else
$HOME/.cache/edge-cloud-sync/target/debug/cloud) on 127.0.0.1:0 with a YAML config
and a data dir under the test's tmp dir, and reads the bound address from the
`listening kafka 127.0.0.1:PORT` line it prints on stdout.

Stderr (the broker's tracing log) goes to a file beside the config; when a test
fails, the tail of that file is attached to the pytest report.

A per-test wall-clock limit is enforced with SIGALRM (ini `case_timeout`, or
`@pytest.mark.timeout(N)`), so no extra plugin is needed.
"""

from __future__ import annotations

import copy
import faulthandler
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from helpers import wait_for  # noqa: E402,F401  (re-exported for tests)

DEFAULT_BIN = Path.home() / ".cache/edge-cloud-sync/target/debug/cloud"
LISTEN_RE = re.compile(r"^listening kafka (127\.0\.0\.1:(\d+))\s*$")
START_TIMEOUT_S = 30.0

# Defaults applied by the test fixtures (not the broker's own defaults): no initial
# rebalance delay so group tests do not wait 3 s per generation.
TEST_DEFAULT_OVERRIDES = {"groups": {"initial_rebalance_delay_ms": 0},
                          # Every listener on a free port: tests may run clouds side by side.
                          "mqtt": {"listen": "127.0.0.1:0"}}

_ACTIVE_CLOUDS: list["Cloud"] = []


def cloud_binary() -> Path:
    return Path(os.environ.get("CLOUD_BIN", str(DEFAULT_BIN)))


def deep_merge(base: dict, over: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def to_yaml(d: dict, indent: int = 0) -> str:
    """Tiny block-YAML emitter for nested dicts of scalars (no PyYAML dependency)."""
    lines = []
    pad = " " * indent
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"{pad}{k}:")
            lines.append(to_yaml(v, indent + 2))
        else:
            # JSON scalars are valid YAML scalars (double-quoted strings, true/false, ints).
            lines.append(f"{pad}{k}: {json.dumps(v)}")
    return "\n".join(line for line in lines if line != "")


class CloudStartError(AssertionError):
    pass


class Cloud:
    """One cloud process (restartable on the same data dir)."""

    def __init__(self, workdir: Path, overrides: dict | None = None, binary: Path | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "cloud.yaml"
        self.stderr_path = self.workdir / "cloud.stderr.log"
        self.binary = Path(binary) if binary else cloud_binary()
        self.config = deep_merge(
            {"data_dir": str(self.data_dir), "kafka": {"listen": "127.0.0.1:0"},
             # The MQTT listener (default 1883) also binds an ephemeral port here.
             "mqtt": {"listen": "127.0.0.1:0"}}, overrides
        )
        self.proc: subprocess.Popen | None = None
        self.bootstrap: str | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.starts = 0
        self._expected_exit = True
        self._stdout_lines: list[str] = []
        self._stderr_file = None

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> "Cloud":
        assert self.proc is None or self.proc.poll() is not None, "cloud already running"
        if not self.binary.exists():
            raise CloudStartError(
                f"cloud binary not found at {self.binary} (set CLOUD_BIN or build it)"
            )
        self.config_path.write_text(to_yaml(self.config) + "\n")
        self.starts += 1
        self._stderr_file = open(self.stderr_path, "ab")
        self._stderr_file.write(f"==== test harness: start #{self.starts} ====\n".encode())
        self._stderr_file.flush()
        self._stdout_lines = []
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            cwd=str(self.workdir),
            env={**os.environ, "NO_COLOR": "1"},
        )
        lines: queue.Queue = queue.Queue()
        proc = self.proc

        def pump():
            # Keeps draining stdout for the life of the process so it never blocks on a
            # full pipe; the first lines also go to the queue read below.
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                self._stdout_lines.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name="cloud-stdout").start()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill_now()
                raise CloudStartError(
                    f"cloud did not print 'listening kafka 127.0.0.1:PORT' within {timeout}s\n"
                    f"stdout so far: {self._stdout_lines!r}\n{self.stderr_tail()}"
                )
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = proc.wait(timeout=5)
                raise CloudStartError(
                    f"cloud exited with code {code} before listening\n"
                    f"stdout: {self._stdout_lines!r}\n{self.stderr_tail()}"
                )
            m = LISTEN_RE.match(line)
            if m:
                self.bootstrap = m.group(1)
                self.port = int(m.group(2))
                self._expected_exit = False
                if self not in _ACTIVE_CLOUDS:
                    _ACTIVE_CLOUDS.append(self)
                return self

    def _kill_now(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def kill(self):
        """SIGKILL (a crash: nothing gets flushed by the process)."""
        assert self.proc is not None
        self.assert_alive_or_expected()  # a crash before our kill is a failure
        self._expected_exit = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._close_stderr()

    def stop(self, timeout: float = 10.0):
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        self._expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._close_stderr()

    def restart(self, kill: bool = True) -> "Cloud":
        """Kill (SIGKILL by default) and start again on the same data dir. The port may
        change: callers must build new clients against `self.bootstrap`."""
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.kill()
            else:
                self.stop()
        return self.start()

    def _close_stderr(self):
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None

    # ---- introspection ---------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self):
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise AssertionError(f"cloud process is not running (exit code {code})\n{self.stderr_tail()}")

    def assert_alive_or_expected(self):
        if not self._expected_exit:
            self.assert_alive()

    def unexpected_exit(self) -> int | None:
        """Exit code if the process died without the harness asking it to."""
        if self.proc is not None and not self._expected_exit and self.proc.poll() is not None:
            return self.proc.returncode
        return None

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("VmRSS not found")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_size(self) -> int:
        try:
            return self.stderr_path.stat().st_size
        except FileNotFoundError:
            return 0

    def stderr_since(self, offset: int) -> str:
        with open(self.stderr_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def stderr_tail(self, n: int = 60) -> str:
        lines = self.stderr_text().splitlines()
        return f"--- cloud stderr tail ({self.stderr_path}) ---\n" + "\n".join(lines[-n:])

    def __repr__(self):
        return f"Cloud(bootstrap={self.bootstrap}, workdir={self.workdir})"


# ---- fixtures ------------------------------------------------------------------------


@pytest.fixture
def cloud_factory(tmp_path, request):
    """Returns make(overrides=None, name='cloud') -> started Cloud; all stopped at teardown."""
    made: list[Cloud] = []
    request.node._edge_clouds = made

    def make(overrides: dict | None = None, name: str = "cloud", start: bool = True) -> Cloud:
        c = Cloud(tmp_path / name, deep_merge(TEST_DEFAULT_OVERRIDES, overrides))
        made.append(c)
        if start:
            c.start()
        return c

    yield make
    died = [(c, c.unexpected_exit()) for c in made]
    for c in made:
        c.stop()
        if c in _ACTIVE_CLOUDS:
            _ACTIVE_CLOUDS.remove(c)
    for c, code in died:
        if code is not None:
            pytest.fail(f"cloud died during the test (exit code {code})\n{c.stderr_tail()}")


@pytest.fixture
def cloud(cloud_factory, request) -> Cloud:
    """A running cloud; per-test config via @pytest.mark.cloud_config({...})."""
    marker = request.node.get_closest_marker("cloud_config")
    overrides = marker.args[0] if marker else None
    return cloud_factory(overrides)


@pytest.fixture(scope="module")
def module_cloud(tmp_path_factory):
    """One cloud shared by a whole module (for read-only / independent-topic tests)."""
    c = Cloud(tmp_path_factory.mktemp("module-cloud"), copy.deepcopy(TEST_DEFAULT_OVERRIDES))
    c.start()
    yield c
    code = c.unexpected_exit()
    c.stop()
    if c in _ACTIVE_CLOUDS:
        _ACTIVE_CLOUDS.remove(c)
    if code is not None:
        pytest.fail(f"module cloud died (exit code {code})\n{c.stderr_tail()}")


@pytest.fixture
def topic_name(request):
    """A unique, Kafka-legal topic name per test."""
    base = re.sub(r"[^a-zA-Z0-9._-]", "_", request.node.name)[:150]
    return f"t.{base}.{int(time.time() * 1000) % 10_000_000}"


# ---- per-test timeout (SIGALRM) and stderr tail on failure ---------------------------


class CaseTimeout(Exception):
    pass


def pytest_addoption(parser):
    parser.addini("case_timeout", "per-test wall-clock limit in seconds", default="120")


def _timeout_for(item) -> float:
    m = item.get_closest_marker("timeout")
    if m and m.args:
        return float(m.args[0])
    return float(item.config.getini("case_timeout"))


def _on_alarm(signum, frame):
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    raise CaseTimeout("test exceeded its time limit (see thread dump on stderr)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    limit = _timeout_for(item)
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    clouds = list(getattr(item, "_edge_clouds", []))
    for c in _ACTIVE_CLOUDS:
        if c not in clouds:
            clouds.append(c)
    for c in clouds:
        rep.sections.append((f"cloud stderr {c.workdir.name} ({rep.when})", c.stderr_tail(80)))
