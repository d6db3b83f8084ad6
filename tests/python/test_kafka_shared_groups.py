"""Shared groups (`$shared/<name>` group ids, design brief section 3): every member is given
every partition, each record goes to one member, a member's OffsetCommit is its
acknowledgement, and what a member that leaves or dies had not acknowledged goes to the
others. Real clients: confluent-kafka (librdkafka) and kafka-python."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from confluent_kafka import KafkaError

from helpers import ck_consumer, ck_create_topic, ck_produce, wait_for


def produce_spread(bootstrap, topic, values, partitions=1):
    """Produces `values` in many small batches (10 records each) so there are batches to
    share out."""
    ck_produce(bootstrap, topic,
               [{"value": v, "partition": i % partitions} for i, v in enumerate(values)],
               **{"linger.ms": 0, "batch.num.messages": 10})


def warm_up(bootstrap, topic, members, partitions=1):
    """Produces one record at a time until every member has received one (an assigned
    member may still be looking up its offsets). Returns the values produced."""
    sent = []
    deadline = time.monotonic() + 60
    while not all(m() for m in members):
        assert time.monotonic() < deadline, "a member never received anything"
        v = f"w{len(sent)}".encode()
        ck_produce(bootstrap, topic, [{"value": v, "partition": len(sent) % partitions}])
        sent.append(v)
        time.sleep(0.05)  # pacing the producer only; the loop waits on the members
    return sent


@contextlib.contextmanager
def running(*members):
    """Starts the members; stops (and closes) them however the block ends."""
    for m in members:
        m.start()
    try:
        yield members
    finally:
        for m in members:
            m.stop()


def split_between(cloud, topic, a, b, assigned, n):
    """Both members started: waits for `assigned`, warms up, produces `n` records and
    checks that together the members got every record once. Returns the values."""
    wait_for(assigned, 30, what="both members assigned")
    values = warm_up(cloud.bootstrap, topic, [a.values, b.values])
    values += [f"r{i}".encode() for i in range(n)]
    produce_spread(cloud.bootstrap, topic, values[-n:])
    wait_for(lambda: len(a.values()) + len(b.values()) >= len(values), 60,
             what="every record consumed by one of the members")
    va, vb = a.values(), b.values()
    assert not set(va) & set(vb), "a record went to both members"
    assert sorted(va + vb) == sorted(values)
    return values


class CkMember(threading.Thread):
    """A confluent-kafka member that polls, records (partition, offset, value) and commits
    each message it consumed (synchronously, after recording it) unless `commit` is off."""

    def __init__(self, bootstrap, group, topic, commit=True, **conf):
        super().__init__(daemon=True)
        self.c = ck_consumer(bootstrap, group, **{"enable.partition.eof": False, **conf})
        self.assignment = []
        self.c.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.commit = commit
        self.got = []
        self.lock = threading.Lock()
        self.stop_evt = threading.Event()
        self.errors = []

    def _on_assign(self, consumer, partitions):
        self.assignment = [p.partition for p in partitions]

    def _on_revoke(self, consumer, partitions):
        self.assignment = []

    def run(self):
        while not self.stop_evt.is_set():
            m = self.c.poll(0.1)
            if m is None:
                continue
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    self.errors.append(m.error())
                continue
            with self.lock:
                self.got.append((m.partition(), m.offset(), m.value()))
            if self.commit:
                self.c.commit(message=m, asynchronous=False)

    def values(self):
        with self.lock:
            return [v for _, _, v in self.got]

    def assigned(self):
        return self.assignment

    def stop(self):
        if self.stop_evt.is_set():
            return
        self.stop_evt.set()
        self.join(10)
        self.c.close()


def test_confluent_members_share_one_partition(cloud, topic_name):
    ck_create_topic(cloud.bootstrap, topic_name, partitions=1)
    a = CkMember(cloud.bootstrap, "$shared/fleet", topic_name)
    b = CkMember(cloud.bootstrap, "$shared/fleet", topic_name)
    with running(a, b):
        # Both are given the one partition (a plain group would leave one idle).
        split_between(cloud, topic_name, a, b,
                      lambda: a.assigned() == [0] and b.assigned() == [0], 2000)
        for m in (a, b):
            offsets = [o for _, o, _ in m.got]
            assert offsets == sorted(offsets), "a member's offsets went backwards"
        assert not a.errors and not b.errors


@pytest.mark.parametrize("survivor", ["confluent", "kafka-python"])
def test_what_a_leaving_member_did_not_commit_goes_to_the_others(cloud, topic_name, survivor):
    """The survivor must start again from the group's offset after the rebalance (eager
    protocols reset positions): checked for librdkafka and kafka-python."""
    ck_create_topic(cloud.bootstrap, topic_name, partitions=1)
    group = "$shared/leave"
    a = CkMember(cloud.bootstrap, group, topic_name, commit=False)
    if survivor == "confluent":
        b = CkMember(cloud.bootstrap, group, topic_name)
        assigned = b.assigned
    else:
        b = KpMember(cloud.bootstrap, group, topic_name)
        assigned = b.c.assignment
    with running(a, b):
        values = split_between(cloud, topic_name, a, b,
                               lambda: a.assigned() and assigned(), 400)
        a.stop()  # LeaveGroup without committing: nothing of what it got is acknowledged
        wait_for(lambda: set(b.values()) == set(values), 60,
                 what="the member left handed what the other never acknowledged")


KILLED_MEMBER = textwrap.dedent("""
    import sys
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2],
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    c.subscribe([sys.argv[3]])
    while True:
        m = c.poll(0.1)
        if m is not None and not m.error():
            print(m.value().decode(), flush=True)
""")


def test_what_a_killed_member_did_not_commit_goes_to_the_others(cloud, topic_name, tmp_path):
    ck_create_topic(cloud.bootstrap, topic_name, partitions=2)
    group = "$shared/kill"
    script = tmp_path / "member.py"
    script.write_text(KILLED_MEMBER)
    victim = subprocess.Popen([sys.executable, str(script), cloud.bootstrap, group, topic_name],
                              stdout=subprocess.PIPE, text=True)
    seen_by_victim = []
    reader = threading.Thread(
        target=lambda: [seen_by_victim.append(line.strip().encode()) for line in victim.stdout],
        daemon=True)
    reader.start()
    b = CkMember(cloud.bootstrap, group, topic_name, **{"session.timeout.ms": 6000})
    b.start()
    try:
        wait_for(lambda: len(b.assigned()) == 2, 30, what="the survivor given both partitions")
        values = warm_up(cloud.bootstrap, topic_name, [lambda: seen_by_victim, b.values],
                         partitions=2)
        values += [f"r{i}".encode() for i in range(600)]
        produce_spread(cloud.bootstrap, topic_name, values[-600:], partitions=2)
        wait_for(lambda: seen_by_victim and len(seen_by_victim) + len(b.values()) >= len(values),
                 60, what="every record consumed once, some by the member to be killed")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        assert not set(seen_by_victim) & set(b.values())
        # Its session expires, the group rebalances, and the survivor gets the rest.
        wait_for(lambda: set(b.values()) == set(values), 60,
                 what="the killed member's unacknowledged records at the survivor")
        assert not b.errors
    finally:
        if victim.poll() is None:
            victim.kill()
        b.stop()


class KpMember(threading.Thread):
    """A kafka-python member with auto commit every 100 ms."""

    def __init__(self, bootstrap, group, topic):
        from kafka import KafkaConsumer
        super().__init__(daemon=True)
        self.c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                               auto_offset_reset="earliest", enable_auto_commit=True,
                               auto_commit_interval_ms=100, session_timeout_ms=10000,
                               heartbeat_interval_ms=500)
        self.got = []
        self.lock = threading.Lock()
        self.stop_evt = threading.Event()

    def run(self):
        while not self.stop_evt.is_set():
            for recs in self.c.poll(timeout_ms=100).values():
                with self.lock:
                    self.got.extend(r.value for r in recs)

    def values(self):
        with self.lock:
            return list(self.got)

    def stop(self):
        self.stop_evt.set()
        self.join(10)
        self.c.close()  # commits what it consumed (auto commit), then leaves


def test_kafka_python_and_confluent_members_share_and_resume_after_a_restart(cloud, topic_name):
    ck_create_topic(cloud.bootstrap, topic_name, partitions=1)
    group = "$shared/mixed"
    a = KpMember(cloud.bootstrap, group, topic_name)
    b = CkMember(cloud.bootstrap, group, topic_name)
    with running(a, b):
        first = split_between(cloud, topic_name, a, b,
                              lambda: b.assigned() and a.c.assignment(), 1000)
    # Everything was acknowledged: the group's offset is the end, also after a kill -9.
    cloud.restart()
    second = [f"b{i}".encode() for i in range(50)]
    produce_spread(cloud.bootstrap, topic_name, second)
    c = CkMember(cloud.bootstrap, group, topic_name)
    with running(c):
        wait_for(lambda: set(c.values()) == set(second), 60,
                 what="a new member resumes at the group's offset")
        assert not set(c.values()) & set(first)


class AioMember(threading.Thread):
    """An aiokafka member (its own event loop in a thread) that commits after each poll."""

    def __init__(self, bootstrap, group, topic):
        super().__init__(daemon=True)
        self.args = (bootstrap, group, topic)
        self.got = []
        self.lock = threading.Lock()
        self.stop_evt = threading.Event()
        self.assigned = threading.Event()

    def run(self):
        import asyncio

        from aiokafka import AIOKafkaConsumer

        async def main():
            bootstrap, group, topic = self.args
            c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                 auto_offset_reset="earliest", enable_auto_commit=False)
            await c.start()
            try:
                while not self.stop_evt.is_set():
                    if c.assignment():
                        self.assigned.set()
                    batch = await c.getmany(timeout_ms=100)
                    for recs in batch.values():
                        with self.lock:
                            self.got.extend(r.value for r in recs)
                    if batch:
                        await c.commit()
            finally:
                await c.stop()

        asyncio.run(main())

    def values(self):
        with self.lock:
            return list(self.got)

    def stop(self):
        self.stop_evt.set()
        self.join(15)


def test_aiokafka_members_share_one_partition(cloud, topic_name):
    ck_create_topic(cloud.bootstrap, topic_name, partitions=1)
    a = AioMember(cloud.bootstrap, "$shared/aio", topic_name)
    b = AioMember(cloud.bootstrap, "$shared/aio", topic_name)
    with running(a, b):
        split_between(cloud, topic_name, a, b,
                      lambda: a.assigned.is_set() and b.assigned.is_set(), 500)
