"""One log, two views: MQTT publish -> Kafka consumers read it; Kafka produce -> MQTT
subscribers receive it; a topic created over Kafka after a wildcard subscription."""

from __future__ import annotations

from helpers import ck_produce, ck_read_all, kcat_consume, kcat_produce
from mqtt_fixtures import Mqtt, mqtt_cloud, props  # noqa: F401


def test_mqtt_publish_is_readable_over_kafka(mqtt_cloud):
    pub = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="cam-7")
    p = props(ContentType="application/json", UserProperty=[("site", "a"), ("line", "1")])
    pub.publish("factory/line1/cam7", b'{"t":1}', qos=1, props=p)
    pub.publish("factory/line1/cam7", b'{"t":2}', qos=0, retain=True)
    recs = ck_read_all(mqtt_cloud.bootstrap, "factory.line1.cam7")
    assert [r.value for r in recs] == [b'{"t":1}', b'{"t":2}']
    assert recs[0].key == b"cam-7"
    h = dict(recs[0].headers)
    assert h["mqtt.topic"] == b"factory/line1/cam7"
    assert h["mqtt.qos"] == b"1"
    assert h["mqtt.retain"] == b"false"
    assert h["mqtt.content_type"] == b"application/json"
    assert h["mqtt.user.site"] == b"a" and h["mqtt.user.line"] == b"1"
    h = dict(recs[1].headers)
    assert (h["mqtt.qos"], h["mqtt.retain"]) == (b"0", b"true")
    # kcat (librdkafka 2.0) reads the same bytes.
    k = kcat_consume(mqtt_cloud.bootstrap, "factory.line1.cam7")
    assert [r.value for r in k] == [b'{"t":1}', b'{"t":2}']


def test_kafka_produce_reaches_mqtt_subscribers(mqtt_cloud):
    v5 = Mqtt(mqtt_cloud.mqtt_port, 5)
    v5.subscribe("plant/+/temp", qos=1)
    v4 = Mqtt(mqtt_cloud.mqtt_port, 4)
    v4.subscribe("plant/#", qos=0)
    ck_produce(mqtt_cloud.bootstrap, "plant.hall1.temp",
               [{"value": b"21.5", "headers": [("unit", b"C"), ("mqtt.user.sensor", b"s1"),
                                               ("mqtt.content_type", b"text/plain")]}])
    m = v5.expect(1)[0]
    assert (m.topic, m.payload) == ("plant/hall1/temp", b"21.5")
    assert ("unit", "C") in m.properties.UserProperty and ("sensor", "s1") in m.properties.UserProperty
    assert m.properties.ContentType == "text/plain"
    assert v4.expect(1)[0].payload == b"21.5"
    # kcat, with the original name in the mqtt.topic header (e.g. an edge-replicated record).
    kcat_produce(mqtt_cloud.bootstrap, "plant.hall1.temp", ["22.0"], headers=["mqtt.topic=plant/hall1/temp"])
    assert v5.expect(1)[0].payload == b"22.0"


def test_topic_created_over_kafka_after_a_wildcard_subscription(mqtt_cloud):
    sub = Mqtt(mqtt_cloud.mqtt_port, 5)
    sub.subscribe("new/#", qos=1)
    # The topic does not exist yet: kcat's produce auto-creates it.
    kcat_produce(mqtt_cloud.bootstrap, "new.device42.state", ["on"])
    m = sub.expect(1, timeout=20)[0]
    assert (m.topic, m.payload) == ("new/device42/state", b"on")
    # And a topic first published over MQTT by someone else.
    pub = Mqtt(mqtt_cloud.mqtt_port, 4)
    pub.publish("new/device43/state", b"off", qos=1)
    m = sub.expect(1)[0]
    assert (m.topic, m.payload) == ("new/device43/state", b"off")


def test_long_topic_names_use_the_hashed_form(mqtt_cloud):
    long = "deep/" + "/".join(f"level{i}" for i in range(60))
    sub = Mqtt(mqtt_cloud.mqtt_port, 4)
    sub.subscribe("deep/#", qos=1)
    pub = Mqtt(mqtt_cloud.mqtt_port, 4)
    pub.publish(long, b"x", qos=1)
    m = sub.expect(1)[0]
    assert (m.topic, m.payload) == (long, b"x")
