"""A QEMU virtual machine that runs the edge and a camera, or the cloud, for the power-cut
tests.

Killing QEMU with SIGKILL is a power cut for the guest: its page cache and everything
its kernel had not yet written to the virtual disk is gone, while what it wrote stays in
the disk image (a raw ext4 file on the host). The next boot mounts that image again, as
a gateway does after power returns.

The guest is Debian's cloud kernel (`tests/vm/kernel.sh` unpacks it into
$EDGE_VM_DIR, default ~/.cache/edge-cloud-sync/vm) with an initramfs built here: static
busybox, the host's `edge` and `camera` binaries or its `cloud` binary (stripped) with
their shared libraries, the virtio modules and `tests/vm/init`. Serial port 0 carries the
init script's and the camera's lines (`ack RUN SEQ` per PUBACK) or the cloud's stdout,
serial port 1 the edge's or the cloud's log. The guest reaches the host's 127.0.0.1 as
10.0.2.2 through QEMU's user-mode network (no host interface); `hostfwd` forwards host
loopback ports to the guest's listeners.

QEMU runs with TCG (software emulation): on the reference machine /dev/kvm exists but
nested KVM fails to emulate `cmpxchg16b` while booting. The guest has one CPU: with two,
one CI run's guest kernel hung before /init (soft lockup of CPU 1 in the kernel's own
start, 300 s, while other builds loaded the host), a wait between emulated CPUs that one
CPU cannot have. Both power-cut tests together take about 75 s instead of 55.
"""

from __future__ import annotations

import os
import queue
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edge_fixtures import edge_binary

ROOT = Path(__file__).resolve().parents[2]
VM_DIR = Path(os.environ.get("EDGE_VM_DIR", str(Path.home() / ".cache/edge-cloud-sync/vm")))
QEMU = "qemu-system-x86_64"


def camera_binary() -> Path:
    return Path(os.environ.get("CAMERA_BIN", str(edge_binary().parent / "camera")))


def missing(binaries: list[Path]) -> str | None:
    """Why the machine cannot run `binaries` here, or None."""
    if os.uname().machine != "x86_64":
        return "the power-cut VM needs an x86_64 host"
    for tool in (QEMU, "busybox", "mkfs.ext4", "strip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (tests/run.sh installs qemu-system-x86 and busybox-static)"
    if not (VM_DIR / "vmlinuz").exists() or not (VM_DIR / "mod/order").exists():
        return f"no guest kernel in {VM_DIR} (run tests/vm/kernel.sh)"
    for b in binaries:
        if not b.exists():
            return f"{b} not found (cargo build --workspace --all-targets)"
    return None


def seeded(binaries: list[Path]) -> tuple[int, random.Random]:
    """Skips the test (fails it under CI=true) when the machine cannot run `binaries` in
    the VM; else returns the run's seed, `POWER_CUT_SEED` or a new one (printed), and a
    random generator made from it."""
    why = missing(binaries)
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    seed = int(os.environ.get("POWER_CUT_SEED", random.randrange(1 << 30)))
    print(f"POWER_CUT_SEED={seed}")
    return seed, random.Random(seed)


def _libraries(binary: Path) -> list[Path]:
    """The shared libraries `binary` loads (none for a static one)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        for p in parts:
            if p.startswith("/"):
                libs.append(Path(p))
                break
    return libs


def build_initramfs(workdir: Path, binaries: dict[str, Path], files: dict[str, str]) -> Path:
    """Writes the guest's initramfs (an uncompressed newc cpio) and returns its path.
    `binaries` go to /bin/NAME (stripped, with their shared libraries), `files` to /NAME."""
    root = workdir / "initramfs"
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "mod", "proc", "sys", "dev", "tmp"):
        (root / d).mkdir(parents=True)
    busybox = Path(shutil.which("busybox")).resolve()
    shutil.copy(busybox, root / "bin/busybox")
    for name, src in binaries.items():
        subprocess.run(["strip", "-o", str(root / "bin" / name), str(src)], check=True)
    for b in (busybox, *binaries.values()):
        for lib in _libraries(b):
            dest = root / lib.relative_to("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(lib, dest)
    for f in (VM_DIR / "mod").iterdir():
        shutil.copy(f, root / "mod" / f.name)
    shutil.copy(ROOT / "tests/vm/init", root / "init")
    (root / "init").chmod(0o755)
    for name, text in files.items():
        (root / name).write_text(text)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    image = workdir / "initramfs.cpio"
    with open(image, "wb") as out:
        subprocess.run(["busybox", "cpio", "-o", "-H", "newc"], cwd=root, check=True,
                       input="\n".join(names).encode(), stdout=out, stderr=subprocess.DEVNULL)
    return image


def make_disk(path: Path, size: int) -> Path:
    """A fresh ext4 file system (with its journal, as a gateway's) in a sparse file."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True)
    return path


_running: list[Vm] = []


def kill_all():
    """Power-cuts every machine still running (a failed test's, at its teardown), so
    none goes on using the host's CPU or its forwarded ports."""
    while _running:
        m = _running.pop()
        m.proc.kill()
        m.proc.wait(timeout=30)


@pytest.fixture
def machines():
    """Kills every machine the test leaves running (see `kill_all`)."""
    yield
    kill_all()


class Vm:
    """One boot of the machine. `params` reach tests/vm/init as environment variables
    (`role`: edge, the default, or cloud); `hostfwd` maps host loopback ports to guest
    ports; `memory_mb` is the guest's RAM (the initramfs lives in it)."""

    def __init__(self, workdir: Path, initramfs: Path, disk: Path, run: int,
                 params: dict[str, object], hostfwd: dict[int, int] | None = None,
                 memory_mb: int = 512):
        self.run = run
        self.edge_log = workdir / f"ttyS1-boot{run}.log"
        self.console_log = workdir / f"console-boot{run}.log"
        self.acked: list[int] = []
        self.lines: list[str] = []
        self._new: queue.Queue = queue.Queue()
        append = "console=ttyS0 quiet panic=-1 " + " ".join(f"{k}={v}" for k, v in params.items())
        nic = "user,model=virtio-net-pci" + "".join(
            f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in (hostfwd or {}).items())
        self.proc = subprocess.Popen(
            [QEMU, "-accel", "tcg", "-cpu", "max", "-m", str(memory_mb), "-smp", "1",
             "-display", "none", "-monitor", "none", "-no-reboot",
             "-serial", "stdio", "-serial", f"file:{self.edge_log}",
             "-kernel", str(VM_DIR / "vmlinuz"), "-initrd", str(initramfs), "-append", append,
             "-drive", f"file={disk},format=raw,if=virtio,cache=writeback",
             "-nic", nic],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _running.append(self)
        threading.Thread(target=self._pump, daemon=True, name=f"vm-{run}").start()

    def _pump(self):
        with open(self.console_log, "w") as log:
            for raw in self.proc.stdout:
                if not raw.endswith(b"\n"):
                    # The power cut stopped the console mid-line ("ack 2 37" of
                    # "ack 2 3719" once): not a line the guest finished printing.
                    log.write(f"(cut mid-line: {raw!r})\n")
                    continue
                line = raw.decode(errors="replace").strip()
                log.write(line + "\n")
                parts = line.split()
                if len(parts) == 3 and parts[0] == "ack" and parts[1] == str(self.run):
                    self.acked.append(int(parts[2]))
                self.lines.append(line)
                self._new.put(line)
        self._new.put(None)

    def wait_for(self, pred, timeout: float, what: str):
        """Waits until pred() holds, re-checked on every console line."""
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and self._new.empty():
                raise AssertionError(f"boot {self.run}: {what} did not happen within {timeout}s "
                                     f"({len(self.acked)} acks){self.tails()}")
            try:
                self._new.get(timeout=min(left, 0.5))
            except queue.Empty:
                pass

    def saw(self, line: str) -> bool:
        return line in self.lines

    def power_cut(self):
        """SIGKILL QEMU, then read what the console had already printed."""
        self.proc.kill()
        self.proc.wait(timeout=30)
        if self in _running:
            _running.remove(self)
        while self._new.get(timeout=10) is not None:
            pass

    def tails(self) -> str:
        log = self.edge_log.read_text(errors="replace") if self.edge_log.exists() else ""
        return (f"\nconsole (last 15 lines): {self.lines[-15:]!r}"
                f"\nttyS1, the edge's or cloud's log (last 2000 chars):\n{log[-2000:]}")
