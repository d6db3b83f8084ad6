"""Power cuts of the cloud: acknowledged Kafka and MQTT writes survive them, once, in order.

The cloud runs in a QEMU virtual machine (`vm.py`, `role=cloud`) on a journaled ext4
disk image with the default `storage.sync: group`. Two host loopback ports are forwarded
to its Kafka and MQTT listeners; it advertises the forwarded Kafka port, so host clients
use it as they would a broker behind NAT. In each of three boots, processes on the host
(`power_cut_clients.py`) write at the same time: an idempotent acks=all confluent-kafka
producer (topic `pck`), a paho MQTT 3.1.1 QoS 1 publisher (`pcm/x`, read back through
Kafka as `pcm.x`), a second one whose publishes are retained (`pcr/last`), a QoS 2
one (`pcq/x`, acknowledged by PUBCOMP) and a second acks=all producer into `pch`, a topic
with `storage.mode=hybrid` (`storage.hybrid_flush_ms: 200`). After a
seeded number of acknowledgements of each, QEMU is killed, which loses the guest's page
cache and every write its kernel had not issued, as a power cut does (a disk's own
volatile write cache is not modelled). Before the first boot's writers start, a
persistent MQTT session (clean session off) subscribes to `pcm/x` and disconnects. A
fourth boot serves the reads.

It checks, for the five topics: every acknowledged write is in the log (for `pch`, every
one acknowledged at least HYBRID_WINDOW_S before the cut: what a hybrid topic promises),
none is there twice (the payload carries the boot and a sequence number), and the log
keeps write order. The retained message of `pcr/last` is the last acknowledged one or a later one.
The persistent session is still there (CONNACK session present) and delivers, from its
stored position, every record of `pcm.x` in log order: one copy, two views, after power
cuts. `POWER_CUT_SEED=N` replays the cut points of a run.
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
from mqtt_fixtures import Mqtt

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
  hybrid_flush_ms: {HYBRID_FLUSH_MS}
"""


WRITERS = (("k", "kafka", "pck"), ("m", "mqtt", "pcm.x"), ("r", "retained", "pcr.last"),
           ("q", "qos2", "pcq.x"), ("h", "hybrid", "pch"))
# The hybrid topic promises less: acknowledged writes older than its flush period (plus a
# margin for the guest's clock and the pipe from the writer) survive a power cut.
HYBRID_FLUSH_MS = 200
HYBRID_WINDOW_S = HYBRID_FLUSH_MS / 1000 + 2.0


class Writers:
    """The host's writers for one boot (processes of their own, killed at the cut)."""

    def __init__(self, bootstrap: str, mqtt_port: int, run: int):
        self.run = run
        self.acked: dict[str, list[int]] = {tag: [] for tag, _, _ in WRITERS}
        # Host monotonic time each acknowledgement was read (no earlier than it arrived).
        self.acked_at: dict[str, list[float]] = {tag: [] for tag, _, _ in WRITERS}
        self._new: queue.Queue = queue.Queue()
        self.procs = [
            subprocess.Popen([sys.executable, str(HERE / "power_cut_clients.py"), kind,
                              bootstrap if kind in ("kafka", "hybrid") else str(mqtt_port),
                              str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _, kind, _ in WRITERS]
        for p in self.procs:
            threading.Thread(target=self._pump, args=(p,), daemon=True).start()

    def _pump(self, proc):
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 3 and parts[0] in self.acked and parts[1] == str(self.run):
                self.acked[parts[0]].append(int(parts[2]))
                self.acked_at[parts[0]].append(time.monotonic())
                self._new.put(1)
        self._new.put(None)

    def counts(self) -> dict[str, int]:
        return {tag: len(seqs) for tag, seqs in self.acked.items()}

    def older_than(self, tag: str, age: float, now: float) -> list[int]:
        """The SEQs of `tag` acknowledged at least `age` seconds before `now`."""
        return [seq for seq, t in zip(self.acked[tag], self.acked_at[tag]) if t <= now - age]

    def wait_for(self, want: dict[str, int], timeout: float, m: vm.Vm):
        """Waits for `want` acknowledgements of each writer, those of the hybrid writer
        at least HYBRID_WINDOW_S old."""
        deadline = time.monotonic() + timeout
        while any(len(self.acked[tag]) < n for tag, n in want.items() if tag != "h") or \
                len(self.older_than("h", HYBRID_WINDOW_S, time.monotonic())) < want["h"]:
            died = [p for p in self.procs if p.poll() is not None]
            if time.monotonic() > deadline or died:
                err = "".join(p.stderr.read()[-2000:] for p in died)
                raise AssertionError(
                    f"boot {self.run}: wanted acks {want} within {timeout}s, got "
                    f"{self.counts()}{err}{m.tails()}")
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


def key(payload: bytes) -> tuple[int, int]:
    run, seq, _ = payload.split(b"|", 2)
    return int(run), int(seq)


def read_log(bootstrap: str, topic: str) -> list[tuple[int, int]]:
    keys = []
    for r in ck_read_all(bootstrap, topic, timeout=120):
        keys.append(key(r.value))
    return keys


@pytest.mark.timeout(1200)
@pytest.mark.usefixtures("machines")
def test_acknowledged_writes_survive_cloud_power_cuts(tmp_path):
    seed, rng = vm.seeded([cloud_binary()])
    kafka_port, mqtt_port = free_port(), free_port()
    while mqtt_port == kafka_port:
        mqtt_port = free_port()
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

    acked: dict[str, set[tuple[int, int]]] = {tag: set() for tag, _, _ in WRITERS}
    for run in range(1, CUTS + 1):
        want = {"k": rng.randint(100, 3000), "m": rng.randint(100, 3000),
                "r": rng.randint(50, 300), "q": rng.randint(50, 1000),
                "h": rng.randint(100, 3000)}
        m = boot(run)
        if run == 1:
            sub = Mqtt(mqtt_port, client_id="pc-sub", clean=False)
            sub.subscribe("pcm/x", qos=1, timeout=60)
            sub.close()
        w = Writers(bootstrap, mqtt_port, run)
        try:
            w.wait_for(want, 300, m)
            cut_at = time.monotonic()
            m.power_cut()
        finally:
            w.kill()
        for tag, got in w.acked.items():
            assert got == list(range(len(got))), f"boot {run}: {tag} acks out of order"
            if tag == "h":
                got = w.older_than("h", HYBRID_WINDOW_S, cut_at)
            acked[tag] |= {(run, seq) for seq in got}
        print(f"boot {run}: power cut after acks {w.counts()}")

    boot(CUTS + 1)
    logs = {}
    for tag, _, topic in WRITERS:
        keys = logs[topic] = read_log(bootstrap, topic)
        dup = len(keys) - len(set(keys))
        assert dup == 0, f"{topic}: {dup} writes in the log twice"
        assert keys == sorted(keys), f"{topic}: write order broken"
        missing = sorted(acked[tag] - set(keys))
        assert not missing, (f"{topic}: {len(missing)} acknowledged writes missing "
                             f"(first {missing[:5]}); POWER_CUT_SEED={seed}")
        older = f" at least {HYBRID_WINDOW_S} s before a cut" if tag == "h" else ""
        print(f"{topic}: {len(acked[tag])} acknowledged{older}, {len(keys)} in the log")

    r = Mqtt(mqtt_port, client_id="pc-ret")
    r.subscribe("pcr/last", qos=1, timeout=60)
    msg = r.expect(1, timeout=60)[0]
    r.close()
    assert msg.retain, f"pcr/last: a live message, not the retained one ({msg.payload!r})"
    last = key(msg.payload)
    assert last >= max(acked["r"]), (f"pcr/last: retained {last}, older than the last "
                                      f"acknowledged {max(acked['r'])}")
    assert last in logs["pcr.last"], f"pcr/last: retained {last} is not in the log"

    sub = Mqtt(mqtt_port, client_id="pc-sub", clean=False)
    assert sub.connack[0].session_present, "pc-sub: the persistent session is gone"
    log_x = logs["pcm.x"]
    got = []
    while len(got) < len(log_x):
        try:
            got.append(key(sub.messages.get(timeout=60).payload))
        except queue.Empty:
            break
    sub.close()
    first_diff = next((i for i, (a, b) in enumerate(zip(got, log_x)) if a != b),
                      min(len(got), len(log_x)))
    assert got == log_x, (f"pc-sub: {len(got)} messages, the log holds {len(log_x)}; "
                          f"first difference at {first_diff}")
    print(f"pc-sub: resumed its session, {len(got)} messages of pcm/x in log order")
