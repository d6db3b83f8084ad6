"""The edge as shipped to ARM gateways (cross/): its dependency tree has no RocksDB for
any target, and the sample gateway config (cross/gateway.yaml) runs with the edge binary
(host build, and the ARM builds under qemu-user when EDGE_AARCH64_BIN / EDGE_ARMV7_BIN
name them; cross/build.sh makes them): a QoS 1 publish is acknowledged and buffered.

`cargo tree` resolves and prints; it compiles nothing, so these checks are cheap."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import edge_fixtures
from edge_fixtures import Edge, dead_bootstrap
from helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu",
           "armv7-unknown-linux-gnueabihf"]
# target -> (env var naming the binary, qemu-user runner, sysroot of the cross libc)
ARM = {
    "aarch64": ("EDGE_AARCH64_BIN", "qemu-aarch64-static", "/usr/aarch64-linux-gnu"),
    "armv7": ("EDGE_ARMV7_BIN", "qemu-arm-static", "/usr/arm-linux-gnueabihf"),
}


def tree(package: str, target: str) -> list[str]:
    out = subprocess.run(
        ["cargo", "tree", "--locked", "-p", package, "-e", "normal,build", "--target", target,
         "--prefix", "none", "--format", "{p}"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("target", TARGETS)
def test_edge_dependency_tree_has_no_rocksdb(target):
    edge = tree("edge", target)
    assert "edge" in edge and "sled" in edge, edge
    assert not [p for p in edge if "rocksdb" in p], f"edge links RocksDB for {target}"
    # The same query does see RocksDB where it is linked (the check is not vacuous).
    assert "librocksdb-sys" in tree("cloud", target)


def gateway_config(workdir: Path) -> str:
    """cross/gateway.yaml with loopback listeners, a scratch data dir and a dead uplink.
    Each replaced line must exist, so an edit of the sample breaks this test loudly."""
    text = (ROOT / "cross/gateway.yaml").read_text()
    for old, new in [
        ("data_dir: /var/lib/edge", f"data_dir: {workdir / 'data'}"),
        ("v4_listen: 0.0.0.0:1883", "v4_listen: 127.0.0.1:0"),
        ("v5_listen: 0.0.0.0:1884", "v5_listen: 127.0.0.1:0"),
        ("listen: 127.0.0.1:9100", "listen: 127.0.0.1:0"),
        ("bootstrap: cloud.example.com:9092", f"bootstrap: {dead_bootstrap()}"),
    ]:
        assert text.count(old) == 1, f"cross/gateway.yaml no longer has {old!r}"
        text = text.replace(old, new)
    return text


def arch_binary(arch: str, tmp_path: Path) -> str:
    """A launcher for the edge of `arch`: the host binary, or a script running the ARM
    binary under qemu-user (exec, so the process Edge watches is the edge itself)."""
    if arch == "host":
        return str(edge_fixtures.edge_binary())
    env, qemu, sysroot = ARM[arch]
    binary = os.environ.get(env)
    if not binary:
        pytest.skip(f"{env} not set (cross/build.sh builds it)")
    if not shutil.which(qemu) or not Path(sysroot, "lib").is_dir():
        pytest.skip(f"{qemu} or {sysroot} missing (apt-get install qemu-user-static gcc-...)")
    launcher = tmp_path / f"edge-{arch}"
    # MALLOC_ARENA_MAX set: the edge's re-exec to cap malloc arenas cannot start a foreign
    # binary under qemu-user (glibc's execvp would hand it to /bin/sh).
    launcher.write_text(f'#!/bin/sh\nMALLOC_ARENA_MAX=2 exec {qemu} -L {sysroot} {binary} "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("arch", ["host", "aarch64", "armv7"])
def test_gateway_config_acks_and_buffers(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_BIN", arch_binary(arch, tmp_path))
    text = gateway_config(tmp_path)
    # Edge writes its dict config through edge_fixtures.to_yaml; hand it the sample's text.
    monkeypatch.setattr(edge_fixtures, "to_yaml", lambda *_a, **_k: text)
    edge = Edge(tmp_path / "gw")
    try:
        edge.start(timeout=60)
        # The sample requires credentials: a wrong password is refused, the right one works.
        bad = subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(edge.v4[1]), "-u", "camera",
             "-P", "wrong", "-t", "alarms/door", "-m", "x", "-q", "1"],
            capture_output=True, timeout=30)
        assert bad.returncode != 0
        # mosquitto_pub -q 1 exits 0 only after the PUBACK.
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(edge.v4[1]), "-u", "camera",
             "-P", "change-me", "-i", f"cam-{arch}", "-t", "alarms/door", "-m", "open",
             "-q", "1"],
            check=True, capture_output=True, timeout=30)
        m = wait_for(lambda: (m := edge.metrics()).get("edge_backlog_records") == 1 and m,
                     20, what=lambda: f"backlog of 1 in {edge.metrics()}")
        assert m["edge_uplink_up"] == 0
        assert edge.proc.poll() is None
    finally:
        edge.stop()
