"""`storage.direct_io` (default on): RocksDB's flushes and compactions write with O_DIRECT.
On a filesystem that refuses O_DIRECT, RocksDB alone refuses to open the store; the cloud
probes the data directory first, warns, and writes through the page cache instead.

The refusing filesystem is a ramfs mounted in a private mount namespace (`unshare`) that
only the cloud process sees, so the test needs root (CI runs as root) and leaves nothing
mounted behind."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import _ACTIVE_CLOUDS, TEST_DEFAULT_OVERRIDES, Cloud, cloud_binary, deep_merge
from helpers import ck_produce, ck_read_all, wait_for

MB = 1 << 20

PROBE = "import os, sys; os.open(sys.argv[1] + '/p', os.O_CREAT | os.O_WRONLY | os.O_DIRECT)"


def ramfs_refuses_o_direct(mount_point: Path) -> str | None:
    """None when a ramfs can be mounted in a private namespace and refuses O_DIRECT
    there; otherwise why this test cannot run here."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and util-linux unshare to mount a ramfs in a private namespace"
    mount_point.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount -t ramfs ramfs "$1" || exit 90; python3 -c "{PROBE}" "$1" && exit 91; exit 0',
         "sh", str(mount_point)],
        capture_output=True, text=True, timeout=30)
    if r.returncode == 90:
        return f"cannot mount a ramfs here: {r.stderr.strip()}"
    if r.returncode == 91:
        return "this kernel's ramfs accepts O_DIRECT"
    assert r.returncode == 0, r
    return None


def test_a_filesystem_refusing_o_direct_gets_buffered_writes_and_a_warning(tmp_path, topic_name):
    work = tmp_path / "cloud"
    data = work / "data"
    why = ramfs_refuses_o_direct(data)
    if why:
        pytest.skip(why)
    # The "binary" mounts a fresh ramfs over the data directory in its own mount namespace,
    # then becomes the cloud (exec keeps the pid, so the harness signals the cloud itself).
    wrapper = tmp_path / "cloud-on-ramfs"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec unshare --mount --propagation private sh -c \'mount -t ramfs ramfs "{data}" '
        f'&& exec "$0" "$@"\' "{cloud_binary()}" "$@"\n')
    wrapper.chmod(0o755)
    cloud = Cloud(work, deep_merge(TEST_DEFAULT_OVERRIDES, None), binary=wrapper)
    try:
        cloud.start()
        assert "O_DIRECT refused here" in cloud.stderr_text(), cloud.stderr_tail()
        # 72 MB of incompressible values: more than the log's 64 MB memtable, so RocksDB
        # flushes an SST file to the ramfs (through the page cache) while serving.
        sent = ck_produce(cloud.bootstrap, topic_name,
                          ({"value": os.urandom(8000)} for _ in range(72 * MB // 8000)))
        store = Path(f"/proc/{cloud.proc.pid}/root") / str(data).lstrip("/") / "store"

        def flushed():
            return [p.name for p in store.iterdir() if p.suffix == ".sst"]

        wait_for(flushed, timeout=60, what=lambda: f"an SST file in {sorted(os.listdir(store))}")
        options = max(p for p in store.iterdir() if p.name.startswith("OPTIONS-"))
        assert "use_direct_io_for_flush_and_compaction=false" in options.read_text()
        got = ck_read_all(cloud.bootstrap, topic_name)
        assert [r.value for r in got] == [m.value() for m in sent]
    finally:
        cloud.stop()
        if cloud in _ACTIVE_CLOUDS:
            _ACTIVE_CLOUDS.remove(cloud)
    assert cloud.proc.returncode == 0, cloud.stderr_tail()
