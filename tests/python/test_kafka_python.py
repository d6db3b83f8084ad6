"""kafka-python (an independent pure-Python implementation) against the cloud."""

from __future__ import annotations

import threading

import pytest

import kwire
from helpers import CODECS, assert_batches_codec, ck_create_topic, ck_produce, ck_read_all, kp_produce, kp_read_all, wait_for


@pytest.mark.parametrize("codec", CODECS)
def test_produce_consume_each_codec(module_cloud, codec):
    topic = f"kp.codec.{codec}"
    records = [{"key": f"k{i}".encode(), "value": (f"kp-{codec}-{i}-" + "y" * (i % 40)).encode(),
                "headers": [("n", str(i).encode()), ("codec", codec.encode())]}
               for i in range(200)]
    metas = kp_produce(module_cloud.bootstrap, topic, records, codec=codec)
    assert [m.offset for m in metas] == list(range(200))

    got = kp_read_all(module_cloud.bootstrap, topic)
    assert [(r.key, r.value, list(r.headers)) for r in got] == [
        (r["key"], r["value"], r["headers"]) for r in records]

    batches = kwire.fetch_all_batches(module_cloud.host, module_cloud.port, topic)
    assert_batches_codec(batches, codec)
    assert len(batches) < len(records), "expected kafka-python to batch several records"


def test_idempotent_producer_is_used_and_stored(module_cloud):
    """kafka-python 3 enables idempotence by default: InitProducerId + sequenced batches."""
    topic = "kp.idempotent"
    kp_produce(module_cloud.bootstrap, topic, [{"value": f"v{i}".encode()} for i in range(50)])
    batches = kwire.fetch_all_batches(module_cloud.host, module_cloud.port, topic)
    assert all(b.producer_id >= 0 for b in batches), [b.producer_id for b in batches]
    assert [r.value for r in ck_read_all(module_cloud.bootstrap, topic)] == [
        f"v{i}".encode() for i in range(50)]


class KPMember(threading.Thread):
    """A KafkaConsumer group member: poll, record, commit synchronously after each poll.
    On stop: a final commit, then wait for `close_evt` before closing (so one member's
    LeaveGroup cannot make the other's final commit fail)."""

    def __init__(self, name, bootstrap, group, topic, committed_barrier, close_evt):
        super().__init__(daemon=True, name=name)
        from kafka import KafkaConsumer
        self.c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                               client_id=name, enable_auto_commit=False,
                               auto_offset_reset="earliest", session_timeout_ms=6000,
                               heartbeat_interval_ms=300, metadata_max_age_ms=1000)
        self.name_ = name
        self.records: list = []
        self.assigned: set[int] = set()
        self.commit_failures = 0
        self.errors: list = []
        self.stop_evt = threading.Event()
        self.barrier = committed_barrier
        self.close_evt = close_evt

    def run(self):
        from kafka.errors import CommitFailedError, RebalanceInProgressError
        try:
            while not self.stop_evt.is_set():
                polled = self.c.poll(timeout_ms=100)
                self.assigned = {tp.partition for tp in self.c.assignment()}
                for tp, msgs in polled.items():
                    for m in msgs:
                        self.records.append((m.partition, m.offset, m.value))
                if polled:
                    try:
                        self.c.commit()
                    except (CommitFailedError, RebalanceInProgressError):
                        self.commit_failures += 1
            self.c.commit()
            self.barrier.wait(30)
            self.close_evt.wait(30)
        except Exception as e:
            self.errors.append(e)
        finally:
            self.c.close()


# kafka-python 3.0 can join before its first Metadata answer; as group leader it then assigns
# nothing ("No partition metadata for topic") and did not rejoin within 30-45 s, with our
# cloud and with the session-1 build alike (3 of 8 runs failed with both cores busy). The
# broker's default initial rebalance delay (3 s, as Kafka's) gives the first member's
# metadata time to arrive; the suite's 0 ms default exposed the client race. Like Kafka's,
# the delay applies whenever a rebalance starts from an empty group: kp-C below joins the
# group after A and B left (it failed 1 run in CI when only a new group waited).
@pytest.mark.cloud_config({"groups": {"initial_rebalance_delay_ms": 3000}})
@pytest.mark.timeout(180)
def test_consumer_group_two_members_commit_and_resume(cloud, topic_name):
    P = 4
    ck_create_topic(cloud.bootstrap, topic_name, partitions=P)
    group = f"g-{topic_name}"
    barrier = threading.Barrier(3)
    close_evt = threading.Event()
    a = KPMember("kp-A", cloud.bootstrap, group, topic_name, barrier, close_evt)
    b = KPMember("kp-B", cloud.bootstrap, group, topic_name, barrier, close_evt)
    a.start()
    wait_for(lambda: a.assigned == set(range(P)), 30, what="A owning all partitions")
    b.start()
    wait_for(lambda: a.assigned and b.assigned and not (a.assigned & b.assigned)
             and a.assigned | b.assigned == set(range(P)), 45,
             what=lambda: f"A and B sharing partitions (A={a.assigned}, B={b.assigned})")
    first = [{"value": f"v{i}".encode(), "partition": i % P} for i in range(100)]
    ck_produce(cloud.bootstrap, topic_name, first)
    want = {r["value"] for r in first}
    wait_for(lambda: want <= {v for m in (a, b) for (_, _, v) in list(m.records)}, 45,
             what="A+B consuming the first 100")
    a.stop_evt.set()
    b.stop_evt.set()
    barrier.wait(30)  # both made their final commit
    close_evt.set()
    a.join(30)
    b.join(30)
    assert not a.errors and not b.errors, (a.errors, b.errors)
    # Each member read only its own partitions, and both took part.
    assert a.records and b.records
    assert {p for p, _, _ in a.records}.isdisjoint({p for p, _, _ in b.records})
    # The group was stable before the first record existed, so nothing is read twice.
    dup = len(a.records) + len(b.records) - len({v for m in (a, b) for (_, _, v) in m.records})
    assert dup == 0, (dup, a.commit_failures, b.commit_failures)

    second = [{"value": f"w{i}".encode(), "partition": i % P} for i in range(40)]
    ck_produce(cloud.bootstrap, topic_name, second)
    barrier2 = threading.Barrier(2)
    close2 = threading.Event()
    c = KPMember("kp-C", cloud.bootstrap, group, topic_name, barrier2, close2)
    c.start()
    want2 = {r["value"] for r in second}
    wait_for(lambda: want2 <= {v for (_, _, v) in list(c.records)}, 45, what="C resuming")
    c.stop_evt.set()
    barrier2.wait(30)
    close2.set()
    c.join(30)
    assert not c.errors, c.errors
    # The group resumed exactly at the committed offsets: only the 40 new records, once each.
    assert sorted(v for (_, _, v) in c.records) == sorted(want2)
    assert sorted((p, o) for p, o, _ in c.records) == sorted(
        (p, o) for p in range(P) for o in range(25, 35))
    # And the same view from another client: confluent's read of the whole topic.
    assert len(ck_read_all(cloud.bootstrap, topic_name)) == 140
