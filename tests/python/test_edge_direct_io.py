"""Direct I/O in the edge's buffer (`buffer.direct_io`): once the backlog passes 64 MiB,
files of large records are written and read back with O_DIRECT. Proven end to end:
camera-sized publishes with the uplink down, the edge killed with SIGKILL mid-stream and
restarted, then the backlog drained into the cloud and read with confluent-kafka: every
acknowledged publish exactly once, in order, byte for byte."""

from __future__ import annotations

import hashlib

import pytest

from edge_fixtures import Publisher, edge_factory, free_port  # noqa: F401
from helpers import ck_read_all, wait_for

SIZE = 48 << 10
TOPICS = ["cam/front", "cam/back"]


def frame(topic: str, n: int) -> bytes:
    """A distinct 48 KB payload whose every byte depends on the topic and number."""
    head = f"{topic}|{n:06d}|".encode()
    block = hashlib.sha256(head).digest()
    return (head + block * (SIZE // len(block) + 1))[:SIZE]


@pytest.mark.timeout(300)
def test_direct_written_backlog_survives_a_kill_and_drains_intact(cloud_factory, edge_factory):
    port = free_port()
    edge = edge_factory({"cloud": {"bootstrap": f"127.0.0.1:{port}"},
                         "buffer": {"sync": "always", "batch_max_bytes": 65536}})
    # 96 MB in all; the kill comes once 72 MB were acknowledged, past the 64 MiB bound.
    p = Publisher(edge.v4, "cam-1")
    n, killed_after = 1000, 750
    for i in range(n):
        for t in TOPICS:
            p.publish(t, frame(t, i))
        if p.ack_count >= 2 * killed_after:
            break
    wait_for(lambda: p.ack_count >= 2 * killed_after, 60, what="acks before the kill")
    direct = edge.metrics().get("edge_buffer_direct_files", 0)
    assert direct > 0, "no batch file was written with O_DIRECT"
    edge.kill()
    acked = p.acked_messages()
    p.close()
    edge.start()
    # The restarted edge buffers more (its backlog is still past the bound), then drains.
    p = Publisher(edge.v4, "cam-2")
    for i in range(n, n + 100):
        for t in TOPICS:
            p.publish(t, frame(t, i))
    wait_for(lambda: len(p.acked) == len(p.mids), 60, what="acks after the restart")
    acked += p.acked_messages()
    p.close()
    assert edge.metrics()["edge_buffer_direct_files"] > 0
    cloud = cloud_factory({"kafka": {"listen": f"127.0.0.1:{port}"}})
    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0, 180,
             what=lambda: f"backlog to drain: {edge.metrics()}")
    for t in TOPICS:
        name = t.replace("/", ".")
        recs = ck_read_all(cloud.bootstrap, name, timeout=90)
        values = [r.value for r in recs]
        assert len(values) == len(set(values)), f"{t}: duplicates in the cloud"
        nums = [int(v.split(b"|")[1]) for v in values]
        assert nums == sorted(nums), f"{t}: per-topic order broken"
        for v, num in zip(values, nums):
            assert v == frame(t, num), f"{t}: record {num} damaged"
        want = {v for topic, v in acked if topic == t}
        missing = want - set(values)
        assert not missing, f"{t}: {len(missing)} acknowledged publishes missing"
        print(f"{t}: {len(values)} records in the cloud, {len(want)} acknowledged")
