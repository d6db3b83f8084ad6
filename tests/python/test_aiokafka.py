"""aiokafka (asyncio, independent implementation) against the cloud."""

from __future__ import annotations

import asyncio
import time

import pytest

import kwire
from helpers import CODECS, assert_batches_codec, aio_produce, aio_read_all, ck_create_topic, run_async


@pytest.mark.parametrize("codec", CODECS)
def test_produce_consume_each_codec(module_cloud, codec):
    topic = f"aio.codec.{codec}"
    records = [{"key": f"k{i}".encode(), "value": (f"aio-{codec}-{i}-" + "z" * (i % 30)).encode(),
                "headers": [("n", str(i).encode())]} for i in range(200)]

    metas = run_async(aio_produce(module_cloud.bootstrap, topic, records, codec=codec))
    assert [m.offset for m in metas] == list(range(200))
    got = run_async(aio_read_all(module_cloud.bootstrap, topic))
    assert [(r.key, r.value, list(r.headers)) for r in got] == [
        (r["key"], r["value"], r["headers"]) for r in records]

    batches = kwire.fetch_all_batches(module_cloud.host, module_cloud.port, topic)
    assert_batches_codec(batches, codec)
    assert len(batches) < len(records), "expected aiokafka to batch several records"


def test_idempotent_producer(module_cloud):
    topic = "aio.idempotent"
    records = [{"value": f"v{i}".encode()} for i in range(100)]
    metas = run_async(aio_produce(module_cloud.bootstrap, topic, records, enable_idempotence=True))
    assert [m.offset for m in metas] == list(range(100))
    batches = kwire.fetch_all_batches(module_cloud.host, module_cloud.port, topic)
    assert all(b.producer_id >= 0 for b in batches)
    got = run_async(aio_read_all(module_cloud.bootstrap, topic))
    assert [r.value for r in got] == [r["value"] for r in records]


async def _member(name, bootstrap, group, topic, stop: asyncio.Event, committed: asyncio.Event,
                  close: asyncio.Event, state: dict):
    """Poll, record, commit after each batch; on stop a final commit, then wait for `close`
    (so one member's LeaveGroup cannot fail the other's final commit)."""
    from aiokafka import AIOKafkaConsumer
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, client_id=name,
                         enable_auto_commit=False, auto_offset_reset="earliest",
                         session_timeout_ms=6000, heartbeat_interval_ms=300,
                         metadata_max_age_ms=1000)
    await c.start()
    st = state.setdefault(name, {"records": [], "assigned": set()})
    try:
        while not stop.is_set():
            batch = await c.getmany(timeout_ms=100)
            st["assigned"] = {tp.partition for tp in c.assignment()}
            for tp, msgs in batch.items():
                for m in msgs:
                    st["records"].append((m.partition, m.offset, m.value))
            if batch:
                await c.commit()
        await c.commit()
        committed.set()
        await close.wait()
    finally:
        await c.stop()


async def _group_scenario(bootstrap, topic, P):
    group = f"g-{topic}"
    state: dict = {}
    stop, close = asyncio.Event(), asyncio.Event()
    ca, cb = asyncio.Event(), asyncio.Event()

    async def until(cond, timeout, what):
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {state}"
            await asyncio.sleep(0.05)

    ta = asyncio.create_task(_member("aio-A", bootstrap, group, topic, stop, ca, close, state))
    await until(lambda: state.get("aio-A", {}).get("assigned") == set(range(P)), 30, "A assigned")
    tb = asyncio.create_task(_member("aio-B", bootstrap, group, topic, stop, cb, close, state))

    def shared():
        a, b = state["aio-A"]["assigned"], state.get("aio-B", {}).get("assigned", set())
        return a and b and not (a & b) and a | b == set(range(P))
    await until(shared, 45, "A and B sharing partitions")

    first = [{"value": f"v{i}".encode(), "partition": i % P} for i in range(100)]
    await aio_produce(bootstrap, topic, first)
    want = {r["value"] for r in first}

    def values(*names):
        return {v for n in names for (_, _, v) in state.get(n, {}).get("records", [])}
    await until(lambda: want <= values("aio-A", "aio-B"), 45, "A+B consuming 100")
    stop.set()
    await asyncio.wait_for(asyncio.gather(ca.wait(), cb.wait()), 30)
    close.set()
    await asyncio.wait_for(asyncio.gather(ta, tb), 30)

    second = [{"value": f"w{i}".encode(), "partition": i % P} for i in range(40)]
    await aio_produce(bootstrap, topic, second)
    stop2, close2, cc = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tc = asyncio.create_task(_member("aio-C", bootstrap, group, topic, stop2, cc, close2, state))
    want2 = {r["value"] for r in second}
    await until(lambda: want2 <= values("aio-C"), 45, "C resuming")
    stop2.set()
    await asyncio.wait_for(cc.wait(), 30)
    close2.set()
    await asyncio.wait_for(tc, 30)
    return state, want, want2


@pytest.mark.timeout(180)
def test_consumer_group_two_members_commit_and_resume(cloud, topic_name):
    P = 4
    ck_create_topic(cloud.bootstrap, topic_name, partitions=P)
    state, want, want2 = run_async(_group_scenario(cloud.bootstrap, topic_name, P), timeout=170)
    a, b, c = (state[n]["records"] for n in ("aio-A", "aio-B", "aio-C"))
    assert a and b, "both members must have consumed"
    assert {p for p, _, _ in a}.isdisjoint({p for p, _, _ in b})
    # The group was stable before the first record existed: nothing read twice.
    assert sorted(v for _, _, v in a + b) == sorted(want)
    # Resume at the committed offsets: only the 40 new records, once each.
    assert sorted(v for _, _, v in c) == sorted(want2)
    assert sorted((p, o) for p, o, _ in c) == sorted((p, o) for p in range(P) for o in range(25, 35))


def test_admin_alter_configs_and_delete_records(cloud, topic_name):
    """aiokafka's admin client: AlterConfigs sets retention.ms (DescribeConfigs reads it
    back), DeleteRecords moves the start to 40 of 100 (the answer is the new low
    watermark, and a reader from the beginning starts there)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.admin.records_to_delete import RecordsToDelete
    from aiokafka.structs import TopicPartition

    ck_create_topic(cloud.bootstrap, topic_name)
    run_async(aio_produce(cloud.bootstrap, topic_name,
                          [{"value": f"v{i}".encode()} for i in range(100)]))

    async def admin_calls():
        a = AIOKafkaAdminClient(bootstrap_servers=cloud.bootstrap)
        await a.start()
        try:
            res = ConfigResource(ConfigResourceType.TOPIC, topic_name,
                                 configs={"retention.ms": "3600000"})
            (altered,) = await a.alter_configs([res])
            described = await a.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic_name)])
            tp = TopicPartition(topic_name, 0)
            low = await a.delete_records({tp: RecordsToDelete(before_offset=40)})
            return altered, described, low[tp]
        finally:
            await a.close()

    altered, described, low = run_async(admin_calls())
    assert all(r[0] == 0 for r in altered.resources), altered
    entries = {e[0]: e[1] for r in described for res in r.resources for e in res[4]}
    assert entries["retention.ms"] == "3600000"
    assert low == 40
    got = run_async(aio_read_all(cloud.bootstrap, topic_name))
    assert [r.offset for r in got] == list(range(40, 100))
