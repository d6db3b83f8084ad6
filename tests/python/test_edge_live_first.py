"""Live-first drain (`cloud.drain: live_first`): when the uplink comes back to a backlog,
a record published afterwards reaches the cloud while the backlog is still draining, and
every record still arrives exactly once; the backlog keeps its own order and the
`edge.seq` header gives the total (arrival) order."""

from __future__ import annotations

import os

import pytest

from edge_fixtures import Publisher, edge_factory, free_port  # noqa: F401
from helpers import ck_read_all, wait_for

N = 3000


def backlog_then_uplink(cloud_factory, edge_factory, drain: str, topic: str):
    """An edge with a backlog of N records on `topic` built with the uplink down; then the
    cloud starts on the edge's bootstrap address. Returns (edge, cloud, publisher) once the
    drain has started."""
    port = free_port()
    edge = edge_factory({
        "cloud": {"bootstrap": f"127.0.0.1:{port}", "drain": drain,
                  # Small batches and a 200 KB/s cap: the 3 MB backlog takes ~15 s.
                  "batch_max_bytes": 65536, "max_bytes_per_sec": 200_000},
        "buffer": {"batch_max_bytes": 65536},
    })
    p = Publisher(edge.v4, "lf-" + topic.replace("/", "-"))
    for i in range(N):
        # Random bytes: zstd cannot shrink the backlog below the cap's reach.
        p.publish(topic, b"old|%06d|" % i + os.urandom(1000), qos=1)
    wait_for(lambda: len(p.acked) == N, 120, what="backlog acks (uplink down)")
    cloud = cloud_factory({"kafka": {"listen": f"127.0.0.1:{port}"}})
    wait_for(lambda: edge.metrics().get("edge_uplink_records_total", 0) > 0, 60,
             what="the drain to start")
    return edge, cloud, p


def run_drain(cloud_factory, edge_factory, drain: str):
    edge, cloud, p = backlog_then_uplink(cloud_factory, edge_factory, drain, "lf/t")
    p.publish("lf/t", b"new|000000|fresh", qos=1)
    wait_for(lambda: len(p.acked) == N + 1, 30, what="the fresh publish's ack")
    p.close()

    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0, 120,
             what=lambda: f"the backlog to drain: {edge.metrics()}")
    recs = ck_read_all(cloud.bootstrap, "lf.t", timeout=30)
    values = [r.value for r in recs]
    assert len(values) == N + 1, f"{len(values)} records in the cloud, want {N + 1}"
    assert len(set(values)) == N + 1, "duplicates in the cloud"
    olds = [int(v.split(b"|")[1]) for v in values if v.startswith(b"old|")]
    assert olds == list(range(N)), "the backlog lost its order"
    by_seq = sorted(recs, key=lambda r: int(dict(r.headers)["edge.seq"]))
    assert by_seq[-1].value.startswith(b"new|"), "edge.seq gives the arrival order"
    # The cloud's log order is the order in which records reached it: how many backlog
    # records came before the fresh one.
    return next(i for i, v in enumerate(values) if v.startswith(b"new|"))


@pytest.mark.timeout(300)
def test_live_first_fresh_record_overtakes_the_backlog_exactly_once(cloud_factory, edge_factory):
    old_before_fresh = run_drain(cloud_factory, edge_factory, "live_first")
    print(f"the fresh record reached the cloud after {old_before_fresh} of {N} backlog records")
    assert old_before_fresh < N // 2, (
        f"the fresh record arrived only after {old_before_fresh} of {N} backlog records")


@pytest.mark.timeout(300)
def test_backlog_first_keeps_arrival_order(cloud_factory, edge_factory):
    assert run_drain(cloud_factory, edge_factory, "backlog_first") == N


@pytest.mark.timeout(300)
def test_live_first_exactly_once_across_an_edge_kill(cloud_factory, edge_factory):
    edge, cloud, p = backlog_then_uplink(cloud_factory, edge_factory, "live_first", "lf/k")
    p.publish("lf/k", b"new|000000|first", qos=1)
    wait_for(lambda: len(p.acked) == N + 1, 30, what="the first fresh publish's ack")
    p.close()
    # SIGKILL mid-drain: live and backlog batches are in flight, both watermarks moving.
    wait_for(lambda: edge.metrics().get("edge_uplink_records_total", 0) >= 800, 60,
             what="drain progress")
    edge.kill()
    edge.start()
    p = Publisher(edge.v4, "lf-kill-2")
    p.publish("lf/k", b"new|000001|second", qos=1)
    wait_for(lambda: len(p.acked) == 1, 30, what="the second fresh publish's ack")
    p.close()
    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0, 120,
             what=lambda: f"the backlog to drain: {edge.metrics()}")
    values = [r.value for r in ck_read_all(cloud.bootstrap, "lf.k", timeout=30)]
    assert len(set(values)) == len(values), "duplicates in the cloud"
    assert len(values) == N + 2, f"{len(values)} records in the cloud, want {N + 2}"
    olds = [int(v.split(b"|")[1]) for v in values if v.startswith(b"old|")]
    assert olds == list(range(N)), "the backlog lost its order"
    news = [v for v in values if v.startswith(b"new|")]
    assert [v.split(b"|")[2] for v in news] == [b"first", b"second"]
    assert values.index(news[1]) < N, "after the restart live records still go first"
