"""Delivery to MQTT subscribers is the log, in log order, whichever path serves it.

A live subscriber is served recent MQTT publishes from memory (`mqtt::recent`) and
everything else (Kafka-produced records, a subscriber that fell behind or resumes a
persistent session) from the store. These tests interleave both kinds of append from
several concurrent publishers and check that every subscriber receives exactly the log's
records, in the log's order, with the same properties, as a Kafka consumer reads them."""

from __future__ import annotations

import threading

from helpers import ck_produce, ck_read_all
from mqtt_fixtures import Mqtt, mqtt_cloud, props  # noqa: F401

TOPIC = "line/7/events"
KAFKA_TOPIC = "line.7.events"


def _publisher(port: int, name: str, n: int, errors: list):
    try:
        c = Mqtt(port, 5, client_id=name)
        for i in range(n):
            p = props(UserProperty=[("from", name), ("i", str(i))]) if i % 3 == 0 else None
            c.publish(TOPIC, f"{name}-{i}".encode(), qos=1 if i % 2 else 0, props=p)
        c.close()
    except Exception as e:  # reported by the test thread
        errors.append(e)


def _seen(msgs) -> list[tuple]:
    out = []
    for m in msgs:
        up = tuple(m.properties.UserProperty) if hasattr(m.properties, "UserProperty") else ()
        out.append((m.topic, m.payload, up))
    return out


def test_live_and_resumed_subscribers_receive_the_log_in_order(mqtt_cloud):
    port = mqtt_cloud.mqtt_port
    live = Mqtt(port, 5)
    live.subscribe("line/+/events", qos=1)
    # A persistent session that goes offline: it resumes from its log position (store).
    offline = Mqtt(port, 5, client_id="late-reader", clean=False,
                   connect_props=props(kind=1, SessionExpiryInterval=600))
    offline.subscribe(TOPIC, qos=1)
    offline.close()

    errors: list = []
    threads = [threading.Thread(target=_publisher, args=(port, f"pub{k}", 150, errors))
               for k in range(3)]
    for t in threads:
        t.start()
    # Meanwhile a Kafka producer appends to the same partition, with the MQTT name header
    # on half of the records (the reverse mapping names the others).
    kafka = [{"value": f"kafka-{i}".encode(),
              "headers": [("mqtt.topic", TOPIC.encode())] if i % 2 else []}
             for i in range(60)]
    for i in range(0, len(kafka), 10):
        ck_produce(mqtt_cloud.bootstrap, KAFKA_TOPIC, kafka[i:i + 10])
    for t in threads:
        t.join(60)
    assert not errors, errors
    total = 3 * 150 + len(kafka)

    log = ck_read_all(mqtt_cloud.bootstrap, KAFKA_TOPIC)
    assert len(log) == total
    want = [r.value for r in log]

    got = live.expect(total, timeout=30)
    assert [m.payload for m in got] == want, "live subscriber order differs from the log"
    # Each publisher's own messages arrive in its publish order (and nothing twice).
    for k in range(3):
        mine = [m.payload for m in got if m.payload.startswith(f"pub{k}-".encode())]
        assert mine == [f"pub{k}-{i}".encode() for i in range(150)]
    # Properties survive whichever path delivered them.
    for m in got:
        if m.payload.startswith(b"pub"):
            name, i = m.payload.decode().split("-")
            up = list(m.properties.UserProperty) if hasattr(m.properties, "UserProperty") else []
            if int(i) % 3 == 0:
                assert ("from", name) in up and ("i", i) in up, (m.payload, up)
            else:
                assert not [p for p in up if p[0] in ("from", "i")], (m.payload, up)

    back = Mqtt(port, 5, client_id="late-reader", clean=False,
                connect_props=props(kind=1, SessionExpiryInterval=600))
    resumed = back.expect(total, timeout=30)
    assert _seen(resumed) == _seen(got), "resumed session and live subscriber disagree"
    back.close()
    live.close()
