"""confluent-kafka (librdkafka 2.16) against the cloud: idempotent producer, a
rebalancing 3-member group that resumes after a kill -9, committed offsets across a
restart, ListOffsets by timestamp, and the AdminClient calls."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka import (OFFSET_BEGINNING, ConsumerGroupState, KafkaError, KafkaException,
                             TopicPartition)
from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic, ResourceType

import kwire
from helpers import (ck_admin, ck_consumer, ck_create_topic, ck_partitions, ck_produce,
                     ck_producer, ck_read_all, ck_watermarks, wait_for)

# ---- idempotent producer -----------------------------------------------------------------


def test_idempotent_producer_exactly_once_in_order(cloud, topic_name):
    ck_create_topic(cloud.bootstrap, topic_name, partitions=3)
    n = 3000
    keys = [f"key-{i % 37}".encode() for i in range(n)]
    records = [{"key": keys[i], "value": f"{i}".encode()} for i in range(n)]
    delivered = ck_produce(
        cloud.bootstrap, topic_name, records, codec="lz4",
        **{"enable.idempotence": True, "retries": 2147483647,
           "max.in.flight.requests.per.connection": 5, "linger.ms": 2,
           "batch.num.messages": 100})
    reported = {m.value(): (m.partition(), m.offset()) for m in delivered}

    got = ck_read_all(cloud.bootstrap, topic_name)
    counts = Counter(r.value for r in got)
    assert sorted(counts) == sorted(r["value"] for r in records), "records missing or extra"
    dups = {v: c for v, c in counts.items() if c > 1}
    assert not dups, f"{len(dups)} records stored more than once, e.g. {list(dups.items())[:5]}"
    # Every record sits at the offset its delivery report announced.
    assert {r.value: (r.partition, r.offset) for r in got} == reported
    # Per key (so per partition), the production order is preserved.
    per_key = defaultdict(list)
    for r in sorted(got, key=lambda r: (r.partition, r.offset)):
        per_key[r.key].append(int(r.value))
    for k, seq in per_key.items():
        assert seq == sorted(seq), f"key {k!r} out of order: {seq[:20]}"

    # Stored batches keep the producer id/epoch and contiguous sequence numbers.
    for p in range(3):
        batches = kwire.fetch_all_batches(cloud.host, cloud.port, topic_name, p)
        assert batches
        assert len({(b.producer_id, b.producer_epoch) for b in batches}) == 1
        assert batches[0].producer_id >= 0
        seq = 0
        for b in batches:
            assert b.base_sequence == seq, f"partition {p}: base sequence {b.base_sequence} != {seq}"
            assert b.crc_ok()
            seq += b.record_count


# ---- a rebalancing consumer group ---------------------------------------------------------


class EventLog:
    """Totally ordered log of what every member saw and committed (one lock, one counter)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = []  # (seq, kind, member, partition, offset, extra)

    def add(self, kind, member, partition, offset, extra=None):
        with self.lock:
            self.events.append((len(self.events), kind, member, partition, offset, extra))

    def of(self, kind):
        with self.lock:
            return [e for e in self.events if e[1] == kind]

    def delivered_values(self):
        with self.lock:
            return {e[5] for e in self.events if e[1] == "deliver"}


class Member(threading.Thread):
    """One group member in its own thread with its own Consumer: poll, record, then a
    synchronous commit of exactly that message (offset + 1)."""

    def __init__(self, name, bootstrap, group, topic, log: EventLog):
        super().__init__(daemon=True, name=name)
        self.mname = name
        self.topic = topic
        self.log = log
        self.stop_evt = threading.Event()
        self.assigned: set[int] = set()
        self.count = 0
        self.errors: list = []
        self.consumer = ck_consumer(
            bootstrap, group=group, **{
                "client.id": name, "session.timeout.ms": 6000, "heartbeat.interval.ms": 300,
                "enable.partition.eof": False, "partition.assignment.strategy": "range",
                "topic.metadata.refresh.interval.ms": 1000})

    def _on_assign(self, c, parts):
        self.assigned = {p.partition for p in parts}
        self.log.add("assign", self.mname, None, None, sorted(self.assigned))

    def _on_revoke(self, c, parts):
        self.assigned = set()
        self.log.add("revoke", self.mname, None, None, sorted(p.partition for p in parts))

    def run(self):
        c = self.consumer
        try:
            c.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
            while not self.stop_evt.is_set():
                m = c.poll(0.1)
                if m is None:
                    continue
                if m.error():
                    if m.error().fatal():
                        self.errors.append(m.error())
                        return
                    continue
                self.log.add("deliver", self.mname, m.partition(), m.offset(), m.value())
                self.count += 1
                try:
                    c.commit(message=m, asynchronous=False)
                    self.log.add("commit_ok", self.mname, m.partition(), m.offset() + 1)
                except KafkaException as e:
                    self.log.add("commit_fail", self.mname, m.partition(), m.offset(), str(e))
        except Exception as e:  # surfaced by the test through .errors
            self.errors.append(e)
        finally:
            c.close()

    def leave(self, timeout=30):
        self.stop_evt.set()
        self.join(timeout)
        assert not self.is_alive(), f"{self.mname} did not close within {timeout}s"
        assert not self.errors, f"{self.mname}: {self.errors}"


class PacedProducer(threading.Thread):
    """Produces value i to partition i % P every `period` seconds until stopped; keeps the
    set of acknowledged values."""

    def __init__(self, bootstrap, topic, partitions, start_at=0, period=0.01):
        super().__init__(daemon=True, name="producer")
        self.p = ck_producer(bootstrap, **{"enable.idempotence": True, "linger.ms": 1})
        self.topic, self.partitions, self.period = topic, partitions, period
        self.next = start_at
        self.acked: set[bytes] = set()
        self.errors: list = []
        self.stop_evt = threading.Event()

    def _cb(self, err, msg):
        if err is None:
            self.acked.add(msg.value())
        else:
            self.errors.append(err)

    def run(self):
        next_t = time.monotonic()
        while not self.stop_evt.is_set():
            i = self.next
            self.next += 1
            self.p.produce(self.topic, value=f"{i}".encode(), partition=i % self.partitions,
                           on_delivery=self._cb)
            # Pacing (a production rate, not a wait for a condition); poll serves reports.
            next_t += self.period
            while (left := next_t - time.monotonic()) > 0:
                self.p.poll(left)
        self.remaining = self.p.flush(30)

    def finish(self):
        self.stop_evt.set()
        self.join(60)
        assert not self.is_alive()
        assert self.remaining == 0 and not self.errors, (self.remaining, self.errors[:5])
        assert len(self.acked) == self.next


@pytest.mark.timeout(240)
def test_group_rebalances_commits_and_resumes_after_kill(cloud, topic_name):
    P = 6
    ck_create_topic(cloud.bootstrap, topic_name, partitions=P)
    group = f"g-{topic_name}"
    log = EventLog()
    prod = PacedProducer(cloud.bootstrap, topic_name, P, period=0.005)
    prod.start()

    def disjoint_cover(*members):
        sets = [m.assigned for m in members]
        union = set().union(*sets)
        return union == set(range(P)) and sum(len(s) for s in sets) == P and all(sets)

    a = Member("A", cloud.bootstrap, group, topic_name, log)
    a.start()
    wait_for(lambda: a.count >= 100, 30, what="A consuming")
    b = Member("B", cloud.bootstrap, group, topic_name, log)
    b.start()
    wait_for(lambda: disjoint_cover(a, b) and b.count >= 100, 45,
             what=lambda: f"A+B sharing partitions (A={a.assigned}, B={b.assigned}, B.count={b.count})")
    c = Member("C", cloud.bootstrap, group, topic_name, log)
    c.start()
    wait_for(lambda: disjoint_cover(a, b, c) and c.count >= 100, 45,
             what=lambda: f"A+B+C sharing partitions ({a.assigned}, {b.assigned}, {c.assigned})")
    c.leave()  # LeaveGroup: its partitions go back to A and B from the committed offsets
    base = a.count + b.count
    wait_for(lambda: disjoint_cover(a, b) and a.count + b.count >= base + 200, 45,
             what=lambda: f"A+B taking over after C left ({a.assigned}, {b.assigned})")
    prod.finish()
    wait_for(lambda: prod.acked <= log.delivered_values(), 60,
             what=lambda: f"group catching up ({len(prod.acked - log.delivered_values())} left)")
    a.leave()
    b.leave()

    # Records nobody has consumed yet, then a crash; a new member must resume from the
    # committed offsets on the restarted broker.
    extra = [{"value": f"{i}".encode(), "partition": i % P} for i in range(prod.next, prod.next + 10 * P)]
    ck_produce(cloud.bootstrap, topic_name, extra)
    all_values = prod.acked | {r["value"] for r in extra}
    deliveries_before_crash = len(log.of("deliver"))
    cloud.kill()
    cloud.start()
    d = Member("D", cloud.bootstrap, group, topic_name, log)
    d.start()
    wait_for(lambda: all_values <= log.delivered_values(), 60,
             what=lambda: f"D resuming ({len(all_values - log.delivered_values())} not delivered)")
    d.leave()

    # ---- assertions ----------------------------------------------------------------------
    # At-least-once with a synchronous commit after every record means:
    #  1. nothing is lost: every acknowledged record was delivered to some member;
    #  2. a record may be delivered again only if no successful commit covering it (a
    #     commit of an offset > its own on that partition) had completed before the
    #     re-delivery. A commit that succeeded was accepted in the current generation, so
    #     the next owner's OffsetFetch sees it. Re-deliveries therefore come only from
    #     commits that failed (REBALANCE_IN_PROGRESS / ILLEGAL_GENERATION during a
    #     rebalance), so also: duplicates <= failed commits;
    #  3. D, after the kill -9 and restart, starts each partition exactly at the last
    #     committed offset (committed offsets are durable).
    events = list(log.events)
    delivered = [e for e in events if e[1] == "deliver"]
    values = Counter(e[5] for e in delivered)
    assert set(values) == all_values, "delivered set != produced set"
    best_commit: dict[int, int] = defaultdict(int)
    violations = []
    for seq, kind, member, p, off, extra_ in events:
        if kind == "commit_ok":
            best_commit[p] = max(best_commit[p], off)
        elif kind == "deliver" and off < best_commit[p]:
            violations.append((member, p, off, best_commit[p]))
    assert not violations, (
        f"{len(violations)} deliveries of records already covered by a successful commit "
        f"(member, partition, offset, committed): {violations[:10]}")
    duplicates = sum(c - 1 for c in values.values())
    failed = len(log.of("commit_fail"))
    assert duplicates <= failed, f"{duplicates} duplicates but only {failed} failed commits"

    committed_before_crash: dict[int, int] = defaultdict(int)
    for seq, kind, member, p, off, _ in events[:]:
        if kind == "commit_ok" and member != "D":
            committed_before_crash[p] = max(committed_before_crash[p], off)
    first_d = {}
    for seq, kind, member, p, off, _ in delivered[deliveries_before_crash:]:
        assert member == "D"
        first_d.setdefault(p, off)
    assert first_d == {p: committed_before_crash[p] for p in range(P)}, (
        "D did not resume exactly at the committed offsets")
    rebalances = len(log.of("assign"))
    print(f"records {len(all_values)}, deliveries {len(delivered)}, duplicates {duplicates}, "
          f"failed commits {failed}, assignments {rebalances}")
    assert rebalances >= 6, f"expected several rebalances, saw {rebalances} assignments"


# ---- committed offsets across a restart --------------------------------------------------


def test_committed_offsets_survive_kill_and_restart(cloud, topic_name):
    ck_create_topic(cloud.bootstrap, topic_name, partitions=2)
    ck_produce(cloud.bootstrap, topic_name,
               [{"value": f"p{p}-{i}".encode(), "partition": p} for p in range(2) for i in range(20)])
    tp = lambda p, o=-1001: TopicPartition(topic_name, p, o)  # noqa: E731

    # (a) a subscribed member commits its position after consuming 12 + 7 records.
    group = f"g-{topic_name}"
    c = ck_consumer(cloud.bootstrap, group=group, **{"enable.partition.eof": False})
    c.subscribe([topic_name])
    seen = {0: [], 1: []}
    deadline = time.monotonic() + 30
    while len(seen[0]) < 12 or len(seen[1]) < 7:
        assert time.monotonic() < deadline, f"consumed only {seen}"
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        seen[m.partition()].append(m.offset())
    c.commit(offsets=[tp(0, 12), tp(1, 7)], asynchronous=False)
    c.close()
    # (b) a "simple" group (assign(), no membership; generation -1 as Flink does).
    simple = f"simple-{topic_name}"
    s = ck_consumer(cloud.bootstrap, group=simple)
    s.assign([tp(0, 0), tp(1, 0)])
    s.commit(offsets=[tp(0, 3), tp(1, 19)], asynchronous=False)
    s.close()

    cloud.kill()
    cloud.start()

    def committed(g):
        k = ck_consumer(cloud.bootstrap, group=g)
        try:
            return {t.partition: t.offset for t in k.committed([tp(0), tp(1)], timeout=10)}
        finally:
            k.close()

    assert committed(group) == {0: 12, 1: 7}
    assert committed(simple) == {0: 3, 1: 19}

    # The group resumes from there: exactly the uncommitted records, each once.
    c = ck_consumer(cloud.bootstrap, group=group, **{"enable.partition.eof": False})
    c.subscribe([topic_name])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < (20 - 12) + (20 - 7):
        assert time.monotonic() < deadline, f"resumed consumer got only {got}"
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        got.append((m.partition(), m.offset()))
    # Nothing more arrives: drain for a short bounded window only to detect extras.
    extra = c.consume(num_messages=100, timeout=1.0)
    c.close()
    assert sorted(got) == [(0, o) for o in range(12, 20)] + [(1, o) for o in range(7, 20)]
    assert [m for m in extra if not m.error()] == []


# ---- ListOffsets by timestamp ------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_offsets_for_times(cloud, topic_name, codec):
    base = int(time.time() * 1000) - 3_600_000
    ts = [base + 10 * i for i in range(30)]
    # Three produce calls of 10 records each, flushed separately: several batches with
    # several records each, so the answer is often inside a batch.
    delivered = []
    for chunk in range(3):
        delivered += ck_produce(cloud.bootstrap, topic_name,
                                [{"value": f"r{i}".encode(), "timestamp": ts[i]}
                                 for i in range(10 * chunk, 10 * chunk + 10)],
                                codec=codec, **{"linger.ms": 50})
    offset_of = [m.offset() for m in delivered]
    got = ck_read_all(cloud.bootstrap, topic_name)
    assert [r.timestamp for r in got] == ts, "CreateTime timestamps not preserved"

    def expected(target):
        later = [offset_of[i] for i, t in enumerate(ts) if t >= target]
        return min(later) if later else -1  # -1: no such record (Kafka answers offset -1)

    targets = [base - 1000, base, base + 5, base + 10 * 13, base + 10 * 13 + 1,
               base + 10 * 19 + 9, base + 10 * 20, ts[-1], ts[-1] + 1]
    c = ck_consumer(cloud.bootstrap)
    try:
        # One query per target: a partition may appear only once per ListOffsets request.
        res = [c.offsets_for_times([TopicPartition(topic_name, 0, t)], timeout=10)[0]
               for t in targets]
    finally:
        c.close()
    for t, r in zip(targets, res):
        assert r.error is None, (t, r.error)
    assert [r.offset for r in res] == [expected(t) for t in targets]


# ---- AdminClient --------------------------------------------------------------------------


def test_admin_client_operations(cloud, topic_name):
    a = ck_admin(cloud.bootstrap)
    t1 = topic_name + ".admin"
    fs = a.create_topics([NewTopic(t1, num_partitions=3, replication_factor=1,
                                   config={"retention.ms": "3600123"})], operation_timeout=10)
    assert fs[t1].result(timeout=20) is None
    assert ck_partitions(cloud.bootstrap, t1) == [0, 1, 2]

    with pytest.raises(KafkaException) as ei:
        a.create_topics([NewTopic(t1, num_partitions=1, replication_factor=1)])[t1].result(timeout=20)
    assert ei.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    bad = "bad/topic name"
    with pytest.raises(KafkaException) as ei:
        a.create_topics([NewTopic(bad, num_partitions=1, replication_factor=1)])[bad].result(timeout=20)
    assert ei.value.args[0].code() == KafkaError.TOPIC_EXCEPTION

    assert a.create_partitions([NewPartitions(t1, 5)])[t1].result(timeout=20) is None
    wait_for(lambda: ck_partitions(cloud.bootstrap, t1) == [0, 1, 2, 3, 4], 20,
             what="5 partitions after create_partitions")
    (m,) = ck_produce(cloud.bootstrap, t1, [{"value": b"to-p4", "partition": 4}])
    assert (m.partition(), m.offset()) == (4, 0)

    res = a.describe_configs([ConfigResource(ResourceType.TOPIC, t1)])
    (fut,) = res.values()
    entries = fut.result(timeout=20)
    assert entries["retention.ms"].value == "3600123"
    assert "retention.bytes" in entries  # defaults are described too

    cluster = a.describe_cluster(request_timeout=10).result(timeout=20)
    assert [(n.id, n.host, n.port) for n in cluster.nodes] == [(0, "127.0.0.1", cloud.port)]
    assert cluster.controller is not None and cluster.controller.id == 0

    # A live group shows in list/describe; after the member leaves it is Empty; then delete.
    group = f"g-{topic_name}"
    c = ck_consumer(cloud.bootstrap, group=group, **{"enable.partition.eof": False,
                                                     "client.id": "admin-test-member"})
    assigned = []
    c.subscribe([t1], on_assign=lambda cons, parts: assigned.extend(parts))
    deadline = time.monotonic() + 30
    while not assigned:
        assert time.monotonic() < deadline, "member never got an assignment"
        c.poll(0.2)
    c.commit(offsets=[TopicPartition(t1, 4, 1)], asynchronous=False)
    with pytest.raises(KafkaException) as ei:  # a group with members cannot be deleted
        a.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=20)
    assert ei.value.args[0].code() == KafkaError.NON_EMPTY_GROUP
    listed = a.list_consumer_groups(request_timeout=10).result(timeout=20)
    assert group in {g.group_id for g in listed.valid}
    desc = a.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=20)
    assert desc.group_id == group
    assert desc.state == ConsumerGroupState.STABLE
    assert len(desc.members) == 1
    assert desc.members[0].client_id == "admin-test-member"
    assert sorted(tp.partition for tp in desc.members[0].assignment.topic_partitions) == [0, 1, 2, 3, 4]
    c.close()

    def state():
        return a.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=20).state
    wait_for(lambda: state() == ConsumerGroupState.EMPTY, 20, what="group Empty after close")

    from confluent_kafka import ConsumerGroupTopicPartitions
    offs = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=20)
    assert {(tp.partition, tp.offset) for tp in offs.topic_partitions if tp.offset >= 0} == {(4, 1)}

    assert a.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=20) is None
    listed = a.list_consumer_groups(request_timeout=10).result(timeout=20)
    assert group not in {g.group_id for g in listed.valid}

    assert a.delete_topics([t1], operation_timeout=10)[t1].result(timeout=20) is None
    wait_for(lambda: t1 not in a.list_topics(timeout=10).topics, 20, what="topic gone after delete")
    with pytest.raises(KafkaException) as ei:
        a.delete_topics([t1], operation_timeout=10)[t1].result(timeout=20)
    assert ei.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_deleted_topic_data_is_gone_when_recreated(cloud, topic_name):
    """Deleting is a range delete: a topic re-created under the same name starts empty."""
    ck_create_topic(cloud.bootstrap, topic_name, partitions=1)
    ck_produce(cloud.bootstrap, topic_name, [{"value": f"old{i}".encode()} for i in range(50)])
    a = ck_admin(cloud.bootstrap)
    a.delete_topics([topic_name], operation_timeout=10)[topic_name].result(timeout=20)
    wait_for(lambda: topic_name not in a.list_topics(timeout=10).topics, 20, what="topic deleted")
    ck_create_topic(cloud.bootstrap, topic_name, partitions=1)
    ck_produce(cloud.bootstrap, topic_name, [{"value": b"new"}])
    got = ck_read_all(cloud.bootstrap, topic_name)
    assert [(r.offset, r.value) for r in got] == [(0, b"new")]


def test_fetch_long_poll_is_woken_by_append(cloud, topic_name):
    """A consumer waiting at the end (fetch.wait.max.ms large) gets a new record promptly:
    the broker's long poll is woken by the append, not by its max_wait timer."""
    ck_create_topic(cloud.bootstrap, topic_name, partitions=1)
    c = ck_consumer(cloud.bootstrap, **{"fetch.wait.max.ms": 10000, "enable.partition.eof": True})
    c.assign([TopicPartition(topic_name, 0, OFFSET_BEGINNING)])
    try:
        # A first record, read straight away (a fetch that finds data does not wait). The
        # consumer sends its next fetch at once, and that one is parked in the long poll
        # (the producer below takes far longer to start than that).
        ck_produce(cloud.bootstrap, topic_name, [{"value": b"seed"}])
        deadline = time.monotonic() + 9
        while True:
            assert time.monotonic() < deadline, "seed record not seen before the 10 s max wait"
            m = c.poll(0.05)
            if m is not None and not m.error():
                assert m.value() == b"seed"
                break
        latencies = []
        for i in range(3):
            t0 = time.monotonic()
            ck_produce(cloud.bootstrap, topic_name, [{"value": f"wake{i}".encode()}])
            got = None
            while got is None:
                assert time.monotonic() - t0 < 9, "record not delivered before the 10 s max wait"
                m = c.poll(0.05)
                if m is not None and not m.error():
                    got = m
            latencies.append(time.monotonic() - t0)
            assert got.value() == f"wake{i}".encode()
        # librdkafka's long poll is 10 s here: each delivery must come well before it.
        assert max(latencies) < 5.0, latencies
    finally:
        c.close()


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_produce_acks_levels(cloud, topic_name, acks):
    records = [{"value": f"acks{acks}-{i}".encode()} for i in range(200)]
    delivered = ck_produce(cloud.bootstrap, topic_name, records, acks=acks)
    if acks != "0":
        assert [m.offset() for m in delivered] == list(range(200))
    # acks=0 gets no answer: wait until the broker has appended all of them.
    wait_for(lambda: ck_watermarks(cloud.bootstrap, topic_name)[1] == 200, 20,
             what="200 records appended")
    assert [r.value for r in ck_read_all(cloud.bootstrap, topic_name)] == [r["value"] for r in records]


@pytest.mark.cloud_config({"kafka": {"auto_create_topics": False}})
def test_auto_create_can_be_disabled(cloud, topic_name):
    c = ck_consumer(cloud.bootstrap)
    try:
        md = c.list_topics(topic_name, timeout=10)  # a Metadata request naming the topic
        assert md.topics[topic_name].error is not None
        assert md.topics[topic_name].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    finally:
        c.close()
    assert topic_name not in ck_admin(cloud.bootstrap).list_topics(timeout=10).topics
    # Producing fails (the producer never learns a partition) rather than creating it.
    p = ck_producer(cloud.bootstrap, **{"message.timeout.ms": 2000})
    errs = []
    p.produce(topic_name, value=b"x", on_delivery=lambda e, m: errs.append(e))
    assert p.flush(15) == 0
    assert len(errs) == 1 and errs[0] is not None
    assert topic_name not in ck_admin(cloud.bootstrap).list_topics(timeout=10).topics
