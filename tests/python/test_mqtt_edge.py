"""An edge-replicated record reaches a cloud MQTT subscriber under its original name."""

from __future__ import annotations

import kwire
from edge_fixtures import Publisher, edge_binary, edge_factory, free_port  # noqa: F401
from helpers import assert_batches_codec, ck_read_all
from mqtt_fixtures import Mqtt, start_mqtt_cloud

import pytest


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compression", ["zstd", "gzip", "lz4", "none"])
def test_edge_replicated_record_reaches_cloud_mqtt(cloud_factory, edge_factory, compression):
    """Whatever the uplink's codec (`cloud.compression`): the batches are stored as the
    edge sent them, an MQTT subscriber of the cloud gets each record under its original
    name, and confluent-kafka reads the same records."""
    if not edge_binary().exists():
        pytest.skip("edge binary not built")
    port = free_port()
    cloud = start_mqtt_cloud(cloud_factory, {"kafka": {"listen": f"127.0.0.1:{port}"}})
    sub = Mqtt(cloud.mqtt_port, 5)
    sub.subscribe("site_a/#", qos=1)
    edge = edge_factory({"cloud": {"bootstrap": f"127.0.0.1:{port}",
                                   "compression": compression}})
    p = Publisher(edge.v4, "cam-edge-1")
    # `.` and `_` are escaped in the Kafka name; the mqtt.topic header restores them.
    sent = [f"21.{i} ".encode() * 40 for i in range(20)]
    for v in sent:
        p.publish("site_a/temp.x", v, qos=1)
    got = sub.expect(len(sent), timeout=60)
    assert [(m.topic, m.payload) for m in got] == [("site_a/temp.x", v) for v in sent]
    users = dict(got[0].properties.UserProperty)
    assert "edge.id" in users, users
    p.close()
    kafka = "site__a.temp_2Ex"
    assert [r.value for r in ck_read_all(cloud.bootstrap, kafka, timeout=30)] == sent
    assert_batches_codec(kwire.fetch_all_batches("127.0.0.1", port, kafka), compression)
