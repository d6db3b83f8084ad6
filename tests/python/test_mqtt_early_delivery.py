"""Early delivery (`mqtt.deliver_before_sync`, on by default) under SIGKILL.

A subscriber may receive a QoS 0/1 message before its append is durable; the publisher's
PUBACK still waits for the fsync. What must hold across kills of the cloud, with real
clients (paho-mqtt, confluent-kafka): every publish the cloud acknowledged, and every
one the publisher sent again after a kill, reaches a persistent-session subscriber (at
least once) and stays in the log Kafka clients read. A stored session position past
what was durable would skip a message appended again under an offset the subscriber was
shown before the kill.

The kill moment is drawn from a seeded RNG (env EARLY_KILL_SEED to replay) and counted in
acknowledgements, never in time. Publishes are pipelined (up to 64 unacknowledged), so
at a kill some are delivered and not yet durable.
"""

from __future__ import annotations

import os
import queue
import random
import threading

import paho.mqtt.client as paho

from helpers import ck_read_all, wait_for
from mqtt_fixtures import Mqtt, restart, start_mqtt_cloud

TOPIC = "early/kill"
WINDOW = 64


class Publisher:
    """A paho 3.1.1 publisher keeping up to WINDOW QoS 1 publishes unacknowledged; it
    records which payloads the cloud acknowledged."""

    def __init__(self, port: int):
        self.acked: set[bytes] = set()
        self._mids: dict[int, bytes] = {}
        self._early: set[int] = set()
        self._room = threading.Semaphore(WINDOW)
        self._lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        self.c.max_inflight_messages_set(WINDOW)
        self.c.on_publish = self._on_publish
        connected = threading.Event()
        self.c.on_connect = lambda *a: connected.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert connected.wait(10), "no CONNACK"

    def _on_publish(self, c, u, mid, rc=None, props=None):
        with self._lock:
            p = self._mids.pop(mid, None)
            if p is None:
                self._early.add(mid)  # acknowledged before publish() recorded it
                return
            self.acked.add(p)
        self._room.release()

    def publish(self, payload: bytes) -> bool:
        """Sends one publish; False once the connection is gone (no room comes back).
        paho's lock is never taken under ours (its network thread calls back under it)."""
        if not self._room.acquire(timeout=5):
            return False
        info = self.c.publish(TOPIC, payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self._room.release()
            return False
        with self._lock:
            if info.mid not in self._early:
                self._mids[info.mid] = payload
                return True
            self._early.discard(info.mid)
            self.acked.add(payload)
        self._room.release()
        return True

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def stop(self):
        self.c.loop_stop()
        try:
            self.c.socket() and self.c.socket().close()
        except OSError:
            pass


def drain(q: queue.Queue) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(q.get_nowait().payload)
        except queue.Empty:
            return out


def test_acknowledged_and_resent_publishes_reach_a_persistent_subscriber_across_kills(cloud_factory):
    seed = int(os.environ.get("EARLY_KILL_SEED", random.randrange(1 << 30)))
    print(f"EARLY_KILL_SEED={seed}")
    rng = random.Random(seed)
    cloud = start_mqtt_cloud(cloud_factory)
    sub = Mqtt(cloud.mqtt_port, 4, client_id="early-sub", clean=False)
    sub.subscribe(TOPIC, qos=1)
    received: list[bytes] = []
    sent: list[bytes] = []
    acked: set[bytes] = set()
    n = 0
    for cycle in range(3):
        pub = Publisher(cloud.mqtt_port)
        # The application's retry: whatever was sent and never acknowledged goes again.
        for p in [p for p in sent if p not in acked]:
            assert pub.publish(p), "cloud refused a resend"
        kill_after = pub.count() + rng.randint(200, 3_000)
        stop = threading.Event()

        def produce():
            nonlocal n
            while not stop.is_set():
                p = f"m{n}".encode()
                sent.append(p)
                n += 1
                if not pub.publish(p):
                    return

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        wait_for(lambda: pub.count() >= kill_after, 60,
                 what=lambda: f"{kill_after} acks (have {pub.count()})")
        cloud.kill()
        stop.set()
        t.join(10)
        pub.stop()
        acked |= pub.acked
        received += drain(sub.messages)
        sub.c.loop_stop()  # its connection died with the cloud
        print(f"cycle {cycle}: killed after {pub.count()} acks, {len(sent)} sent, "
              f"{len(received)} received so far")
        restart(cloud, kill=False)  # already killed: start it again on the same data
        sub = Mqtt(cloud.mqtt_port, 4, client_id="early-sub", clean=False)
        assert sub.connack[0].session_present
    # Last round: resend what is unacknowledged, then a barrier the subscriber must reach.
    pub = Publisher(cloud.mqtt_port)
    for p in [p for p in sent if p not in acked] + [b"__barrier__"]:
        assert pub.publish(p)
    wait_for(lambda: b"__barrier__" in pub.acked, 30, what="the last acknowledgements")
    acked |= pub.acked
    while b"__barrier__" not in received:
        received += [m.payload for m in sub.expect(1, timeout=30)]
    pub.stop()
    sub.close()
    assert set(sent) <= acked, "every publish acknowledged in the end"
    missing = set(sent) - set(received)
    assert not missing, f"{len(missing)} acknowledged publishes never reached the subscriber: " \
                        f"{sorted(missing)[:10]}"
    logged = {r.value for r in ck_read_all(cloud.bootstrap, "early.kill", timeout=60)}
    assert set(sent) <= logged, f"missing from the log: {sorted(set(sent) - logged)[:10]}"
