"""The kill test: producers with acks=all load the cloud, the test SIGKILLs it at a random
moment, restarts it on the same data dir and checks that every acknowledged record is
there (exactly once for idempotent producers). Three kill cycles on one data dir; after
the last, every earlier cycle's acknowledged records are checked again.

Note: SIGKILL proves the broker acknowledges only after the write reached RocksDB (not a
user-space buffer). It cannot prove the fsync itself (a power cut would be needed).

The kill moment is drawn from a seeded RNG (env DURABILITY_SEED to replay); the assertions
hold for any moment."""

from __future__ import annotations

import os
import random
import threading
from collections import Counter, defaultdict

import pytest

from helpers import ck_create_topic, ck_producer, ck_read_all, wait_for

CYCLES = 3
PARTITIONS = 3


class LoadProducer(threading.Thread):
    def __init__(self, name, bootstrap, topic, idempotent: bool):
        super().__init__(daemon=True, name=name)
        self.pname = name
        self.topic = topic
        self.idempotent = idempotent
        conf = {"linger.ms": 5, "message.timeout.ms": 4000, "retry.backoff.ms": 50,
                "queue.buffering.max.messages": 20000, "compression.codec": "lz4"}
        if idempotent:
            conf.update({"enable.idempotence": True})
        else:
            conf.update({"enable.idempotence": False, "retries": 5})
        self.p = ck_producer(bootstrap, **conf)
        self.acked: list[tuple[bytes, int, int]] = []  # (value, partition, offset)
        self.failed = 0
        self.sent = 0
        self.stop_evt = threading.Event()
        self.remaining = None

    def _cb(self, err, msg):
        if err is None:
            self.acked.append((msg.value(), msg.partition(), msg.offset()))
        else:
            self.failed += 1

    def run(self):
        i = 0
        while not self.stop_evt.is_set():
            v = f"{self.pname}-{i:07d}".encode()
            try:
                # Keyed by producer so each producer's records go to one partition in order.
                self.p.produce(self.topic, value=v, key=self.pname.encode(), on_delivery=self._cb)
                i += 1
                self.sent = i
            except BufferError:
                self.p.poll(0.05)
            self.p.poll(0)
        # Outstanding messages either get acked (none: the broker is dead) or time out.
        self.remaining = self.p.flush(30)
        self.p = None  # destroy it now: no reconnect attempts to the dead broker's port


def check_topic(bootstrap, topic, producers_acked: dict, idempotent: dict):
    got = ck_read_all(bootstrap, topic, timeout=60)
    counts = Counter(r.value for r in got)
    missing = []
    for name, acked in producers_acked.items():
        for v, p, off in acked:
            if counts[v] == 0:
                missing.append((v, p, off))
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    for name, acked in producers_acked.items():
        if idempotent[name]:
            mine = {v for v, c in counts.items() if v.startswith(name.encode() + b"-")}
            dups = [v for v in mine if counts[v] > 1]
            assert not dups, f"idempotent producer {name}: {len(dups)} duplicated, e.g. {dups[:5]}"
    # Acknowledged offsets are where the records are.
    where = {r.value: (r.partition, r.offset) for r in got}
    moved = [(v, p, o, where[v]) for acked in producers_acked.values() for v, p, o in acked
             if where[v] != (p, o) and counts[v] == 1]
    assert not moved, f"acked records at other offsets than acknowledged: {moved[:5]}"
    # Each idempotent producer's records are in its production order.
    per = defaultdict(list)
    for r in sorted(got, key=lambda r: (r.partition, r.offset)):
        name = r.value.rsplit(b"-", 1)[0].decode()
        per[name].append(r.value)
    for name, vals in per.items():
        if idempotent.get(name):
            assert vals == sorted(vals), f"{name}: records out of order"
    return got


@pytest.mark.timeout(300)
def test_acknowledged_records_survive_sigkill(cloud_factory):
    seed = int(os.environ.get("DURABILITY_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"DURABILITY_SEED={seed}")
    rng = random.Random(seed)
    cloud = cloud_factory()
    history = []
    for cycle in range(CYCLES):
        topic = f"durable.{cycle}"
        ck_create_topic(cloud.bootstrap, topic, partitions=PARTITIONS)
        producers = [LoadProducer(f"c{cycle}p{j}", cloud.bootstrap, topic, idempotent=(j < 3))
                     for j in range(4)]
        for p in producers:
            p.start()
        kill_after = rng.randint(2_000, 30_000)
        wait_for(lambda: sum(len(p.acked) for p in producers) >= kill_after, 60,
                 what=lambda: f"{kill_after} acks (have {sum(len(p.acked) for p in producers)})")
        cloud.kill()
        for p in producers:
            p.stop_evt.set()
        for p in producers:
            p.join(60)
            assert not p.is_alive(), f"{p.pname} did not finish"
        acked = {p.pname: list(p.acked) for p in producers}
        idem = {p.pname: p.idempotent for p in producers}
        total = sum(len(a) for a in acked.values())
        print(f"cycle {cycle}: killed after {total} acks (target {kill_after}); "
              f"sent {sum(p.sent for p in producers)}, failed {sum(p.failed for p in producers)}")
        assert total >= kill_after

        cloud.start()
        got = check_topic(cloud.bootstrap, topic, acked, idem)
        assert len(got) >= total
        history.append((topic, acked, idem))

    # The last restarts did not lose anything acknowledged in earlier cycles either.
    for topic, acked, idem in history:
        check_topic(cloud.bootstrap, topic, acked, idem)
