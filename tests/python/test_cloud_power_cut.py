"""Power cuts of the cloud: acknowledged Kafka and MQTT writes survive them, once, in order.

The cloud runs in a QEMU virtual machine (`vm.py`, `role=cloud`) on a journaled ext4
disk image with the default `storage.sync: group`. Two host loopback ports are forwarded
to its Kafka and MQTT listeners; it advertises the forwarded Kafka port, so host clients
use it as they would a broker behind NAT. In each of three boots, a process on the host
(`power_cut_clients.py`) writes at the same time with an idempotent acks=all
confluent-kafka producer (topic `pck`) and a paho MQTT 3.1.1 QoS 1 publisher (`pcm/x`,
read back through Kafka as `pcm.x`); after a seeded number of acknowledgements QEMU is
killed, which loses the guest's page cache and every write its kernel had not issued, as
a power cut does (a disk's own volatile write cache is not modelled). A fourth boot
serves the reads.

It checks, for both topics: every acknowledged write is in the log, none is there twice
(the payload carries the boot and a sequence number), and the log keeps write order.
`POWER_CUT_SEED=N` replays the cut points of a run.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import vm
from vm import machines  # noqa: F401  (the fixture that kills what a failed test left)
from conftest import cloud_binary
from edge_fixtures import free_port
from helpers import ck_read_all

CUTS = 3
HERE = Path(__file__).resolve().parent


def cloud_yaml(kafka_port: int) -> str:
    return f"""data_dir: /data/cloud
kafka:
  listen: 0.0.0.0:9092
  advertised_host: 127.0.0.1
  advertised_port: {kafka_port}
mqtt:
  listen: 0.0.0.0:1883
  durable_publish: true
storage:
  sync: group
"""


class Writers:
    """The host's two writers for one boot (processes of their own, killed at the cut)."""

    def __init__(self, bootstrap: str, mqtt_port: int, run: int):
        self.run = run
        self.acked: dict[str, list[int]] = {"k": [], "m": []}
        self._new: queue.Queue = queue.Queue()
        self.procs = [
            subprocess.Popen([sys.executable, str(HERE / "power_cut_clients.py"), kind, addr,
                              str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for kind, addr in (("kafka", bootstrap), ("mqtt", str(mqtt_port)))]
        for p in self.procs:
            threading.Thread(target=self._pump, args=(p,), daemon=True).start()

    def _pump(self, proc):
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 3 and parts[0] in self.acked and parts[1] == str(self.run):
                self.acked[parts[0]].append(int(parts[2]))
                self._new.put(1)
        self._new.put(None)

    def wait_for(self, kafka: int, mqtt: int, timeout: float, m: vm.Vm):
        deadline = time.monotonic() + timeout
        while len(self.acked["k"]) < kafka or len(self.acked["m"]) < mqtt:
            died = [p for p in self.procs if p.poll() is not None]
            if time.monotonic() > deadline or died:
                err = "".join(p.stderr.read()[-2000:] for p in died)
                raise AssertionError(
                    f"boot {self.run}: wanted {kafka} Kafka and {mqtt} MQTT acks within "
                    f"{timeout}s, got {len(self.acked['k'])} and {len(self.acked['m'])}"
                    f"{err}{m.tails()}")
            try:
                self._new.get(timeout=0.5)
            except queue.Empty:
                pass

    def kill(self):
        """Kills the writers and collects every acknowledgement they had printed."""
        for p in self.procs:
            p.kill()
            p.wait(timeout=30)
        ended = 0
        while ended < len(self.procs):
            if self._new.get(timeout=10) is None:
                ended += 1


def read_log(bootstrap: str, topic: str) -> list[tuple[int, int]]:
    keys = []
    for r in ck_read_all(bootstrap, topic, timeout=120):
        run, seq, _ = r.value.split(b"|", 2)
        keys.append((int(run), int(seq)))
    return keys


@pytest.mark.timeout(1200)
@pytest.mark.usefixtures("machines")
def test_acknowledged_writes_survive_cloud_power_cuts(tmp_path):
    seed, rng = vm.seeded([cloud_binary()])
    kafka_port, mqtt_port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{kafka_port}"
    work = tmp_path / "vm"
    work.mkdir()
    initramfs = vm.build_initramfs(work, {"cloud": cloud_binary()},
                                   {"cloud.yaml": cloud_yaml(kafka_port)})
    disk = vm.make_disk(work / "disk.img", 1 << 30)

    def boot(run: int) -> vm.Vm:
        m = vm.Vm(work, initramfs, disk, run, {"role": "cloud"},
                  hostfwd={kafka_port: 9092, mqtt_port: 1883}, memory_mb=1024)
        # QEMU accepts connections to a forwarded port before the guest listens and
        # then resets them: connect only once the cloud printed its listeners.
        m.wait_for(lambda: any(line.startswith("listening mqtt") for line in m.lines), 300,
                   "the cloud's listeners")
        return m

    acked: dict[str, set[tuple[int, int]]] = {"k": set(), "m": set()}
    for run in range(1, CUTS + 1):
        want_k, want_m = rng.randint(100, 3000), rng.randint(100, 3000)
        m = boot(run)
        w = Writers(bootstrap, mqtt_port, run)
        try:
            w.wait_for(want_k, want_m, 300, m)
            m.power_cut()
        finally:
            w.kill()
        for kind in ("k", "m"):
            got = w.acked[kind]
            assert got == list(range(len(got))), f"boot {run}: {kind} acks out of order"
            acked[kind] |= {(run, s) for s in got}
        print(f"boot {run}: power cut after {len(w.acked['k'])} Kafka and "
              f"{len(w.acked['m'])} MQTT acks")

    boot(CUTS + 1)
    for kind, topic in (("k", "pck"), ("m", "pcm.x")):
        keys = read_log(bootstrap, topic)
        dup = len(keys) - len(set(keys))
        assert dup == 0, f"{topic}: {dup} writes in the log twice"
        assert keys == sorted(keys), f"{topic}: write order broken"
        missing = sorted(acked[kind] - set(keys))
        assert not missing, (f"{topic}: {len(missing)} acknowledged writes missing "
                             f"(first {missing[:5]}); POWER_CUT_SEED={seed}")
        print(f"{topic}: {len(acked[kind])} acknowledged, {len(keys)} in the log")
