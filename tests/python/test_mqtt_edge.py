"""An edge-replicated record reaches a cloud MQTT subscriber under its original name."""

from __future__ import annotations

from edge_fixtures import Publisher, edge_binary, edge_factory, free_port  # noqa: F401
from mqtt_fixtures import Mqtt, start_mqtt_cloud

import pytest


@pytest.mark.timeout(120)
def test_edge_replicated_record_reaches_cloud_mqtt(cloud_factory, edge_factory):
    if not edge_binary().exists():
        pytest.skip("edge binary not built")
    port = free_port()
    cloud = start_mqtt_cloud(cloud_factory, {"kafka": {"listen": f"127.0.0.1:{port}"}})
    sub = Mqtt(cloud.mqtt_port, 5)
    sub.subscribe("site_a/#", qos=1)
    edge = edge_factory({"cloud": {"bootstrap": f"127.0.0.1:{port}"}})
    p = Publisher(edge.v4, "cam-edge-1")
    # `.` and `_` are escaped in the Kafka name; the mqtt.topic header restores them.
    p.publish("site_a/temp.x", b"21.5", qos=1)
    m = sub.expect(1, timeout=60)[0]
    assert (m.topic, m.payload) == ("site_a/temp.x", b"21.5")
    users = dict(m.properties.UserProperty)
    assert "edge.id" in users, users
    p.close()
