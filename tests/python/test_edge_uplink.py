"""Edge -> cloud, end to end with real clients: paho-mqtt publishes QoS 1 to the edge,
the edge and the cloud are each killed with SIGKILL mid-stream and restarted, then
confluent-kafka reads every topic from the cloud: every acknowledged publish exactly once,
per-topic order intact, headers and timestamps as the design brief specifies."""

from __future__ import annotations

import json
import random
import time

import pytest

from edge_fixtures import Publisher, edge_factory, free_port  # noqa: F401
from helpers import ck_admin, ck_read_all, wait_for

TOPICS = ["cam/1", "cam/2", "site_a/temp.x"]


def kafka_name(mqtt: str) -> str:
    """The readable form of common::topic::mqtt_to_kafka for the names used here."""
    out = []
    for i, ch in enumerate(mqtt):
        if ch == "/":
            out.append(".")
        elif ch == "_":
            out.append("__" if i else "_5F")
        elif ch.isascii() and (ch.isalnum() or ch == "-"):
            out.append(ch)
        else:
            out.extend(f"_{b:02X}" for b in ch.encode())
    return "".join(out)


def publish_round(pub: Publisher, counters: dict, n: int, stop_after_acks: int | None = None,
                  on_threshold=None):
    """Publishes n messages per topic (interleaved); optionally calls on_threshold() once
    stop_after_acks publishes of this round were acknowledged."""
    start_acked = len(pub.acked)
    fired = False
    for _ in range(n):
        for t in TOPICS:
            counters[t] += 1
            pub.publish(t, f"{t}|{counters[t]:06d}".encode(), qos=1)
        if stop_after_acks is not None and not fired and len(pub.acked) - start_acked >= stop_after_acks:
            on_threshold()
            fired = True
            return
    if stop_after_acks is not None and not fired:
        wait_for(lambda: len(pub.acked) - start_acked >= stop_after_acks, 30, what="acks")
        on_threshold()


@pytest.mark.timeout(300)
def test_exactly_once_in_order_across_kills(cloud_factory, edge_factory):
    port = free_port()
    cloud = cloud_factory({"kafka": {"listen": f"127.0.0.1:{port}"}})
    edge = edge_factory({"cloud": {"bootstrap": f"127.0.0.1:{port}"},
                         "buffer": {"sync": "always", "batch_max_bytes": 16384}})
    t0 = int(time.time() * 1000)
    counters = {t: 0 for t in TOPICS}
    acked: list[tuple[str, bytes]] = []

    # Phase 1: steady publishing, all acknowledged.
    p = Publisher(edge.v4, "cam-sim-1")
    publish_round(p, counters, 200)
    wait_for(lambda: len(p.acked) == 600, 30, what="phase 1 acks")
    # Phase 2: SIGKILL the edge while publishes are in flight.
    publish_round(p, counters, 400, stop_after_acks=300, on_threshold=edge.kill)
    acked += p.acked_messages()
    p.close()
    edge.start()
    # Phase 3: SIGKILL the cloud while the edge is draining and new publishes arrive.
    p = Publisher(edge.v5, "cam-sim-2", version=5)
    publish_round(p, counters, 200, stop_after_acks=100, on_threshold=cloud.kill)
    wait_for(lambda: len(p.acked) == len(p.mids), 30, what="phase 3 acks (uplink down)")
    cloud.start()
    publish_round(p, counters, 100)
    wait_for(lambda: len(p.acked) == len(p.mids), 30, what="phase 4 acks")
    acked += p.acked_messages()
    p.close()
    # Drain: the edge's backlog empties once the cloud acknowledged everything.
    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0, 120,
             what=lambda: f"backlog to drain: {edge.metrics()}")
    t1 = int(time.time() * 1000)

    for t in TOPICS:
        recs = ck_read_all(cloud.bootstrap, kafka_name(t), timeout=60)
        values = [r.value for r in recs]
        assert len(values) == len(set(values)), f"{t}: duplicates in the cloud"
        nums = [int(v.split(b"|")[1]) for v in values]
        assert nums == sorted(nums), f"{t}: per-topic order broken"
        want = {v for topic, v in acked if topic == t}
        print(f"{t}: {len(values)} records in the cloud, {len(want)} acknowledged publishes")
        missing = want - set(values)
        assert not missing, f"{t}: {len(missing)} acknowledged publishes missing"
        for r in recs:
            h = dict(r.headers)
            assert h["mqtt.topic"] == t.encode()
            assert h["mqtt.qos"] == b"1"
            assert h["mqtt.retain"] == b"false"
            assert h["edge.id"] == b"edge-test"
            assert int(h["edge.seq"]) >= 0
            assert r.key in (b"cam-sim-1", b"cam-sim-2")
            assert t0 - 1000 <= r.timestamp <= t1, "timestamp is the edge's receive time"
    m = edge.metrics()
    assert m["edge_uplink_up"] == 1
    assert m["edge_uplink_reconnects_total"] >= 1


@pytest.mark.timeout(120)
def test_v5_properties_and_names_that_need_escaping(cloud_factory, edge_factory):
    cloud = cloud_factory()
    edge = edge_factory({"cloud": {"bootstrap": cloud.bootstrap},
                         # `#` does not match `$` topics (MQTT 4.7.2): list them explicitly.
                         "uplink": {"filters": [{"filter": "$site/#", "priority": 1},
                                                {"filter": "#", "priority": 0}]}})
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("line", "7"), ("shift", "night")]
    props.ContentType = "application/json"
    p = Publisher(edge.v5, "cam-v5", version=5)
    topic = "$site/ü line/cam.7"
    p.publish(topic, b'{"t": 21.5}', qos=1, properties=props)
    p.publish("plain/retained", b"r", qos=0)
    wait_for(lambda: len(p.acked) == 2, 10, what="puback (QoS 1) and send (QoS 0)")
    p.close()
    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0
             and edge.metrics().get("edge_uplink_records_total") == 2, 60,
             what=lambda: f"drain: {edge.metrics()}")
    kname = kafka_name(topic)
    assert kname == "_24site._C3_BC_20line.cam_2E7"
    (r,) = ck_read_all(cloud.bootstrap, kname, timeout=30)
    h = dict(r.headers)
    assert r.value == b'{"t": 21.5}'
    assert r.key == b"cam-v5"
    assert h["mqtt.topic"] == topic.encode()
    assert h["mqtt.user.line"] == b"7" and h["mqtt.user.shift"] == b"night"
    assert h["mqtt.content_type"] == b"application/json"
    (q,) = ck_read_all(cloud.bootstrap, "plain.retained", timeout=30)
    assert dict(q.headers)["mqtt.qos"] == b"0"


@pytest.mark.timeout(120)
def test_linger_sends_the_commits_of_a_moment_in_one_batch(cloud_factory, edge_factory):
    """`cloud.linger_ms`: a caught-up replicator waits that long after the next group
    commit before it reads, so publishes committed one by one go up as one Produce batch
    (and the buffer grows one file instead of starting one per commit). With linger 0 the
    same publishes, each waited for, go up one batch each (the counter's control)."""
    port = free_port()
    cloud_factory({"kafka": {"listen": f"127.0.0.1:{port}"}})
    n = 8
    for linger_ms in (0, 5000):
        edge = edge_factory({"cloud": {"bootstrap": f"127.0.0.1:{port}", "linger_ms": linger_ms},
                             "uplink": {"filters": [{"filter": "cam/#", "priority": 0}]}})
        wait_for(lambda: edge.metrics().get("edge_uplink_up") == 1, 30, what="uplink up")
        pub = Publisher(edge.v4, f"linger-{linger_ms}")
        t0 = time.monotonic()
        for i in range(n):
            pub.publish(f"cam/linger{linger_ms}", f"{i}".encode())
            # Acknowledged = committed (sync: always): each publish is its own commit.
            wait_for(lambda: pub.ack_count == i + 1, 10, what=f"PUBACK {i}")
            if linger_ms == 0:
                wait_for(lambda: edge.metrics().get("edge_uplink_records_total") == i + 1,
                         10, what=f"record {i} uplinked")
        if linger_ms and time.monotonic() - t0 < linger_ms / 1000 - 1:
            # Still inside the linger that the first commit started: nothing sent yet.
            assert edge.metrics().get("edge_uplink_records_total") == 0
        m = wait_for(lambda: (m := edge.metrics()).get("edge_uplink_records_total") == n and m,
                     30, what=lambda: f"uplinked {edge.metrics()}")
        batches = m["edge_uplink_batches_total"]
        if linger_ms == 0:
            assert batches == n, m
        else:
            assert batches == 1, m
        pub.c.disconnect()
        edge.stop()


@pytest.mark.timeout(180)
def test_compression_level_trades_cpu_for_uplink_bytes(cloud_factory, edge_factory):
    """`cloud.compression_level`: the same backlog of sensor JSON reaches a Kafka consumer
    intact at zstd level 1 and 19, and level 19 puts fewer bytes on the wire. Each backlog
    is built with the cloud down, so both levels cut the same records into batches."""
    port = free_port()
    cloud = cloud_factory({"kafka": {"listen": f"127.0.0.1:{port}"}}, start=False)
    n = 600
    msgs = [json.dumps({"ts": 1763860000000 + i * 250, "device": f"cam-{i % 37:04d}",
                        "temp": round(18 + (i % 70) / 10, 1), "status": "ok"}).encode()
            for i in range(n)]
    wire = {}
    for level in (1, 19):
        edge = edge_factory({"cloud": {"bootstrap": f"127.0.0.1:{port}", "compression_level": level}},
                            name=f"edge-{level}")
        p = Publisher(edge.v4, f"sensor-{level}")
        for m in msgs:
            p.publish(f"lvl{level}/sensors", m, qos=1)
        wait_for(lambda: len(p.acked) == n, 30, what="acks while the cloud is down")
        p.close()
        cloud.start()
        wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0
                 and edge.metrics().get("edge_uplink_records_total") == n, 60,
                 what=lambda: f"drain: {edge.metrics()}")
        wire[level] = edge.metrics()["edge_uplink_wire_bytes_total"]
        got = ck_read_all(cloud.bootstrap, f"lvl{level}.sensors", timeout=30)
        assert [r.value for r in got] == msgs
        edge.stop()
        cloud.stop()
    assert wire[19] < wire[1], wire


@pytest.mark.timeout(240)
def test_records_too_large_for_the_cloud_are_dropped_and_counted_not_retried_forever(
        cloud_factory, edge_factory):
    """The cloud, like Kafka, refuses a RecordBatch over its max.message.bytes (1,048,588
    by default) with MESSAGE_TOO_LARGE however often it is sent. Camera frames do not
    compress: two frames of 524,150 bytes made one batch just over that, and a frame of
    1.5 MB (the edge's MQTT limit raised to 2 MiB) could never fit; either refusal used
    to stop the uplink for every topic, for good. Now batches are cut under
    `cloud.max_message_bytes`, a record that alone cannot fit is dropped and counted,
    and everything else arrives once, in order. A frame as large that compresses fits."""
    port = free_port()
    cloud = cloud_factory({"kafka": {"listen": f"127.0.0.1:{port}"}}, start=False)
    edge = edge_factory({"cloud": {"bootstrap": f"127.0.0.1:{port}"},
                         "mqtt": {"max_payload_bytes": 2 << 20}})
    rnd = random.Random(7)
    cam = [b"first", rnd.randbytes(524_150), rnd.randbytes(524_150),
           rnd.randbytes(1_500_000), bytes(1_500_000), b"last"]
    p = Publisher(edge.v4, "camera")
    for i, frame in enumerate(cam):
        p.publish("cam/big", frame)
        p.publish("sensors/t", f"t{i}".encode())
    wait_for(lambda: len(p.acked) == 2 * len(cam), 30, what="acks while the cloud is down")
    p.close()
    cloud.start()
    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0, 90,
             what=lambda: f"backlog to drain: {edge.metrics()}\n{edge.stderr_tail()}")
    m = edge.metrics()
    assert m.get('edge_buffer_dropped_records{reason="too_large_for_cloud"}') == 1, m
    assert not [k for k in m if k.startswith("edge_uplink_produce_errors_total")], m
    got = [r.value for r in ck_read_all(cloud.bootstrap, "cam.big", timeout=60)]
    assert [len(v) for v in got] == [len(v) for v in cam[:3] + cam[4:]]
    assert got == cam[:3] + cam[4:]
    assert [r.value for r in ck_read_all(cloud.bootstrap, "sensors.t")] == \
        [f"t{i}".encode() for i in range(len(cam))]
    assert "record too large for the cloud" in edge.stderr_tail(200)


@pytest.mark.timeout(180)
def test_topics_are_created_on_clusters_that_do_not_auto_create(cloud_factory, edge_factory):
    """Production Kafka clusters often run with auto.create.topics.enable=false (the
    cloud's `kafka.auto_create_topics: false` is the same). With `cloud.create_topics:
    false` the edge's topic is refused (UNKNOWN_TOPIC_OR_PARTITION, counted) and its
    records wait in the buffer; with the default the edge creates each topic it needs
    with CreateTopics, `cloud.topic_configs` applied, and every record arrives once, in
    order."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    cloud = cloud_factory({"kafka": {"listen": f"127.0.0.1:{free_port()}",
                                     "auto_create_topics": False}})
    edge = edge_factory({"cloud": {"bootstrap": cloud.bootstrap, "create_topics": False}})
    p = Publisher(edge.v4, "plant")
    for i in range(5):
        p.publish("plant/a", f"a{i}".encode())
    wait_for(lambda: edge.metrics().get('edge_uplink_produce_errors_total{code="3"}', 0) >= 2,
             30, what=lambda: f"refusals counted: {edge.metrics()}")
    admin = ck_admin(cloud.bootstrap)
    assert "plant.a" not in admin.list_topics(timeout=10).topics
    assert edge.metrics()["edge_backlog_records"] == 5
    p.close()
    edge.stop()

    edge.config["cloud"]["create_topics"] = True
    edge.config["cloud"]["topic_configs"] = {"retention.ms": 3600000, "cleanup.policy": "delete"}
    edge.start()
    p = Publisher(edge.v4, "plant")
    for i in range(5, 10):
        p.publish("plant/a", f"a{i}".encode())
        p.publish("plant/b", f"b{i}".encode())
    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0, 60,
             what=lambda: f"backlog to drain: {edge.metrics()}\n{edge.stderr_tail()}")
    assert [r.value for r in ck_read_all(cloud.bootstrap, "plant.a")] == \
        [f"a{i}".encode() for i in range(10)]
    assert [r.value for r in ck_read_all(cloud.bootstrap, "plant.b")] == \
        [f"b{i}".encode() for i in range(5, 10)]
    for topic in ("plant.a", "plant.b"):
        res = ConfigResource(ResourceType.TOPIC, topic)
        configs = admin.describe_configs([res])[res].result(timeout=20)
        assert configs["retention.ms"].value == "3600000", topic
        assert len(admin.list_topics(timeout=10).topics[topic].partitions) == 1


@pytest.mark.timeout(120)
def test_topic_configs_apply_where_the_cloud_would_auto_create(cloud_factory, edge_factory):
    """With `cloud.topic_configs` set the edge creates its topics itself even where the
    brokers auto-create, which would apply their defaults instead of the configs."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    cloud = cloud_factory({"kafka": {"listen": f"127.0.0.1:{free_port()}"}})
    edge = edge_factory({"cloud": {"bootstrap": cloud.bootstrap,
                                   "topic_configs": {"retention.ms": 7200000}}})
    p = Publisher(edge.v4, "plant")
    p.publish("plant/c", b"c0")
    wait_for(lambda: edge.metrics().get("edge_uplink_records_total") == 1, 30,
             what=lambda: f"uplinked: {edge.metrics()}\n{edge.stderr_tail()}")
    res = ConfigResource(ResourceType.TOPIC, "plant.c")
    admin = ck_admin(cloud.bootstrap)
    configs = admin.describe_configs([res])[res].result(timeout=20)
    assert configs["retention.ms"].value == "7200000"
    assert "created topic" in edge.stderr_tail(100)
