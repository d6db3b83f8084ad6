"""The edge never crash-loops on its own buffer: with sled's log damaged so that sled
refuses to open it, the edge sets sled's files aside, rebuilds its index from the batch
files and starts; a Kafka consumer then reads every acknowledged publish once, in order."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edge_fixtures import Publisher, edge_factory, free_port  # noqa: F401
from helpers import ck_read_all, wait_for

TOPICS = ["cam/front", "cam/back"]


@pytest.mark.timeout(180)
def test_a_sled_log_sled_refuses_to_open_is_set_aside_and_every_record_still_arrives(
        cloud_factory, edge_factory):
    port = free_port()
    cloud = cloud_factory({"kafka": {"listen": f"127.0.0.1:{port}"}}, start=False)
    edge = edge_factory({"cloud": {"bootstrap": f"127.0.0.1:{port}"},
                         "uplink": {"filters": [{"filter": "cam/#", "priority": 0}]}})
    pub = Publisher(edge.v4, "damage-pub")
    sent = {t: [f"{t}|{i:05d}".encode() for i in range(400)] for t in TOPICS}
    for i in range(400):
        for t in TOPICS:
            pub.publish(t, sent[t][i])
    wait_for(lambda: pub.ack_count == 800, 60, what="800 PUBACKs with the cloud down")
    pub.close()
    # A clean stop and one more start: sled writes a snapshot at every open, and it is
    # the snapshot's promise about the log that the damage breaks.
    edge.stop()
    edge.start()
    assert edge.metrics()["edge_backlog_records"] == 800
    edge.stop()

    buffer = Path(edge.config["data_dir"]) / "buffer"
    db = buffer / "db"
    data = bytearray(db.read_bytes())
    rng = random.Random(7)
    for i in range(16, 272):
        data[i] = rng.randrange(256)
    db.write_bytes(bytes(data))

    edge.start()
    m = edge.metrics()
    assert m["edge_buffer_index_rebuilt"] == 1, m
    assert m["edge_backlog_records"] == 800, m
    assert m["edge_buffer_corrupt_skipped"] == 0, m
    assert (buffer / "damaged-index" / "db").is_file()
    assert "index is rebuilt from the batch files" in edge.stderr_path.read_text(errors="replace")

    # New publishes go after the recovered ones.
    pub = Publisher(edge.v4, "damage-pub-2")
    for t in TOPICS:
        sent[t].append(f"{t}|after".encode())
        pub.publish(t, sent[t][-1])
    wait_for(lambda: pub.ack_count == 2, 30, what="PUBACKs after the rebuild")
    pub.close()

    cloud.start()
    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0, 60,
             what=lambda: f"drain: {edge.metrics()}")
    for t in TOPICS:
        got = ck_read_all(cloud.bootstrap, t.replace("/", "."), timeout=30)
        assert [r.value for r in got] == sent[t], t

    # The next start opens the rebuilt index as it is.
    edge.stop()
    edge.start()
    assert edge.metrics()["edge_buffer_index_rebuilt"] == 0
