"""Topic access control (`acl` in cloud.yaml): one set of rules, written in MQTT topic
filters, governs the MQTT view (SUBSCRIBE, PUBLISH, wills, stored sessions) and the Kafka
view (Produce, Fetch, Metadata, admin requests) of the same topics.

Every test but the config-error ones runs a cloud with three MQTT users (alice, bob,
root), SASL/PLAIN on the Kafka listener for alice, root and sensor, and these rules:
anyone (anonymous too) reads `public/#`; alice reads `devices/alice/#` and `public/#` and
writes `devices/alice/<client id>/up` and `devices/alice/shared`; root does everything;
sensor (Kafka only) writes `telemetry/#` and reads nothing. bob has no rule of his own,
so he gets what anonymous clients get.

A refused publish is proven dropped, not just refused on the wire: root, subscribed to
`#`, receives the allowed publish sent after it and then a barrier with nothing in
between, and root's Kafka view has no topic for it.
"""

from __future__ import annotations

import subprocess
import time

import paho.mqtt.client as paho
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions,
                                   NewTopic, ResourceType)
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import CloudStartError
from helpers import ck_admin, ck_consumer, ck_produce, ck_producer, ck_read_all, wait_for
from edge_fixtures import edge_binary, edge_factory, free_port  # noqa: F401
from mqtt_fixtures import Mqtt, mqtt_cloud, mqtt_port, restart  # noqa: F401
from test_kafka_security import pki  # noqa: F401

MQTT_USERS = {"alice": "a-pw", "bob": "b-pw", "root": "r-pw"}
KAFKA_USERS = {"alice": "a-pw", "root": "r-pw", "sensor": "s-pw"}
RULES = [
    # Consumer groups need a grant too: the test clients' groups for everyone.
    {"user": "*", "read": ["public/#"], "groups": ["g", "pytest-*"]},
    {"user": "alice", "read": ["devices/%u/#", "public/#"],
     "write": ["devices/%u/%c/up", "devices/%u/shared"], "groups": ["%u-*"]},
    {"user": "root", "read": ["#"], "write": ["#"], "admin": ["#"], "groups": ["*"]},
    {"user": "sensor", "write": ["telemetry/#"]},
]
CONFIG = {"mqtt": {"credentials": MQTT_USERS, "allow_anonymous": True},
          "kafka": {"sasl": {"users": KAFKA_USERS}},
          "acl": RULES}

NOT_AUTHORIZED = 0x87  # MQTT 5 SUBACK / PUBACK / PUBREC / CONNACK reason
V311_SUBACK_FAILURE = 0x80
# paho reports the 3.1.1 CONNACK return code 5 (not authorized) as reason 135 (0x87);
# return code 4 (bad user name or password) is 134, so 135 is only ever return code 5.
PAHO_V311_RC5 = 135
TOPIC_AUTHORIZATION_FAILED = KafkaError.TOPIC_AUTHORIZATION_FAILED  # 29


def sasl(user: str) -> dict:
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN",
            "sasl.username": user, "sasl.password": KAFKA_USERS[user]}


class Client(Mqtt):
    """`Mqtt` with an optional login that also records each PUBACK's (PUBCOMP's) reason."""

    def __init__(self, port: int, version: int = 5, user: str | None = None,
                 connect: bool = True, **kw):
        self.pub_reasons: dict[int, object] = {}
        super().__init__(port, version, connect=False, **kw)
        if user is not None:
            self.c.username_pw_set(user, MQTT_USERS[user])
        if connect:
            self.connect()

    def _on_publish(self, c, u, mid, rc=None, props=None):
        with self._lock:
            self.pub_reasons[mid] = rc
        super()._on_publish(c, u, mid, rc, props)

    def publish_reason(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Publishes and returns the acknowledgement's reason code (0: success)."""
        info = self.publish(topic, payload, qos=qos)
        return self.pub_reasons[info.mid].value

    def subscribe_many(self, filters: list[str], qos: int = 1) -> list[int]:
        """One SUBSCRIBE with several filters; returns the SUBACK codes in order."""
        if self.version == 5:
            req = [(f, SubscribeOptions(qos=qos)) for f in filters]
        else:
            req = [(f, qos) for f in filters]
        r, mid = self.c.subscribe(req)
        assert r == paho.MQTT_ERR_SUCCESS, r
        wait_for(lambda: mid in self._subacks, 10, what=f"SUBACK for {filters}")
        return [c.value for c in self._subacks[mid]]

    def refused_connack(self, timeout: float = 10) -> int:
        """Connects expecting a refusal: returns the CONNACK reason (paho's numbering)
        once the server has closed the connection too."""
        self.c.connect("127.0.0.1", self.port, keepalive=self.keepalive)
        self.c.loop_start()
        assert self._connected.wait(timeout), "no CONNACK"
        assert self.disconnected.wait(timeout), "connection not closed after a refused CONNACK"
        self.c.loop_stop()
        return self.connack[1].value


def root_sink(port: int) -> Client:
    """root subscribed to everything: sees any publish the broker lets through."""
    root = Client(port, 5, user="root")
    assert root.subscribe("#", qos=1)[0].value == 1
    return root


def received(sub: Mqtt, n: int) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for m in sub.expect(n)]


def kafka_topics(cloud, user: str = "root") -> set[str]:
    md = ck_admin(cloud.bootstrap, **sasl(user)).list_topics(timeout=10)
    return set(md.topics)


def assert_no_topic(cloud, *mqtt_names: str):
    """A refused publish left nothing in the log: root's Kafka view has no such topic."""
    names = kafka_topics(cloud)
    for t in mqtt_names:
        assert t.replace("/", ".") not in names, f"{t} exists as a Kafka topic: {sorted(names)}"


def produce_error(cloud, user: str, topic: str) -> KafkaError | None:
    """Produces one record as `user` and returns the delivery report's error."""
    p = ck_producer(cloud.bootstrap, **sasl(user), **{"message.timeout.ms": 15000})
    out = []
    p.produce(topic, value=b"x", on_delivery=lambda err, msg: out.append(err))
    assert p.flush(30) == 0, "no delivery report"
    return out[0]


# ---- MQTT ---------------------------------------------------------------------------


@pytest.mark.cloud_config(CONFIG)
def test_mqtt5_grants_and_refusals_for_a_user_and_client_id(mqtt_cloud):
    """alice (client id cam1), MQTT 5: in one SUBSCRIBE the filters within her read
    filters are granted and the others get 0x87; QoS 1 publishes outside her write
    filters (another client id's topic, another user's) get PUBACK 0x87 and are dropped,
    QoS 0 ones are dropped silently, QoS 2 (mosquitto_pub) gets PUBREC 0x87; her allowed
    publishes succeed and reach root's `#` subscriber and her own subscription."""
    port = mqtt_cloud.mqtt_port
    root = root_sink(port)
    alice = Client(port, 5, user="alice", client_id="cam1")
    codes = alice.subscribe_many(["devices/alice/#", "devices/bob/#", "public/#", "#",
                                  "devices/+/cam1/up", "devices/alice/+/up"])
    assert codes == [1, NOT_AUTHORIZED, 1, NOT_AUTHORIZED, NOT_AUTHORIZED, 1]

    assert alice.publish_reason("devices/alice/cam2/up", b"other client id") == NOT_AUTHORIZED
    assert alice.publish_reason("devices/bob/cam1/up", b"other user") == NOT_AUTHORIZED
    assert alice.publish_reason("public/news", b"read only") == NOT_AUTHORIZED
    alice.publish("devices/bob/q0", b"qos 0", qos=0)
    q2 = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", "5",
                         "-u", "alice", "-P", MQTT_USERS["alice"], "-i", "cam1-q2", "-q", "2",
                         "-t", "devices/bob/q2", "-m", "qos 2"],
                        capture_output=True, text=True, timeout=20)
    assert "Not authorized" in q2.stderr, q2
    assert alice.publish_reason("devices/alice/cam1/up", b"allowed 1") == 0
    assert alice.publish_reason("devices/alice/shared", b"allowed 2") == 0

    assert received(root, 2) == [("devices/alice/cam1/up", b"allowed 1"),
                                 ("devices/alice/shared", b"allowed 2")]
    root.expect_none(root, "public/barrier")
    assert sorted(received(alice, 2)) == [("devices/alice/cam1/up", b"allowed 1"),
                                          ("devices/alice/shared", b"allowed 2")]
    alice.expect_none(root, "public/barrier2")
    assert alice.c.is_connected(), "a refused publish does not end the connection"
    assert_no_topic(mqtt_cloud, "devices/alice/cam2/up", "devices/bob/cam1/up", "devices/bob/q0",
                    "devices/bob/q2")


@pytest.mark.cloud_config(CONFIG)
def test_mqtt311_refusals_suback_0x80_and_silent_drop(mqtt_cloud):
    """alice (cam1) on MQTT 3.1.1: a refused filter gets SUBACK 0x80 beside a granted
    one; refused QoS 1 and QoS 2 publishes are acknowledged as usual (as Mosquitto does),
    the connection stays up, and the messages are neither delivered nor stored."""
    port = mqtt_cloud.mqtt_port
    root = root_sink(port)
    alice = Client(port, 4, user="alice", client_id="cam1")
    assert alice.subscribe_many(["devices/bob/#", "devices/alice/#"]) == [V311_SUBACK_FAILURE, 1]

    assert alice.publish_reason("devices/bob/x", b"refused q1", qos=1) == 0
    assert alice.publish_reason("devices/bob/y", b"refused q2", qos=2) == 0
    assert alice.c.is_connected() and not alice.disconnected.is_set()
    assert alice.publish_reason("devices/alice/cam1/up", b"allowed", qos=1) == 0

    assert received(root, 1) == [("devices/alice/cam1/up", b"allowed")]
    root.expect_none(root, "public/barrier")
    assert received(alice, 1) == [("devices/alice/cam1/up", b"allowed")]
    assert not alice.disconnected.is_set()
    assert_no_topic(mqtt_cloud, "devices/bob/x", "devices/bob/y")


@pytest.mark.cloud_config(CONFIG)
def test_will_to_a_topic_the_client_may_not_write_refuses_the_connection(mqtt_cloud):
    """A will alice may not write: CONNACK 0x87 on MQTT 5 and return code 5 on 3.1.1;
    an anonymous client's will (anonymous clients write nothing) likewise. The refused
    wills are never published; a will she may write is accepted and fires on a drop."""
    port = mqtt_cloud.mqtt_port
    root = root_sink(port)
    for version, expected in ((5, NOT_AUTHORIZED), (4, PAHO_V311_RC5)):
        c = Client(port, version, user="alice", client_id="cam1", connect=False,
                   will=("devices/bob/will", b"refused will", 1, False))
        assert c.refused_connack() == expected, version
        anon = Client(port, version, connect=False, will=("public/will", b"anon will", 1, False))
        assert anon.refused_connack() == expected, (version, "anonymous")

    ok = Client(port, 5, user="alice", client_id="cam1",
                will=("devices/alice/cam1/up", b"allowed will", 1, False))
    ok.drop()
    assert received(root, 1) == [("devices/alice/cam1/up", b"allowed will")]
    root.expect_none(root, "public/barrier")
    assert_no_topic(mqtt_cloud, "devices/bob/will", "public/will")


@pytest.mark.cloud_config(CONFIG)
def test_anonymous_and_ruleless_clients_get_only_the_star_rule(mqtt_cloud):
    """An anonymous client, and bob (authenticated, no rule of his own): `public/#` and
    `$share/g/public/#` are granted and deliver; `devices/#`, `#` and
    `$share/g/devices/#` get 0x87; every publish, even to `public/...`, gets PUBACK 0x87
    and is dropped."""
    port = mqtt_cloud.mqtt_port
    root = root_sink(port)
    anon = Client(port, 5)
    bob = Client(port, 5, user="bob")
    sharer = Client(port, 5)
    for c in (anon, bob):
        assert c.subscribe_many(["public/#", "devices/#", "#"]) == [1, NOT_AUTHORIZED,
                                                                    NOT_AUTHORIZED]
    assert sharer.subscribe_many(["$share/g/public/#", "$share/g/devices/#"]) == [
        1, NOT_AUTHORIZED]

    for c, who in ((anon, "anon"), (bob, "bob")):
        assert c.publish_reason(f"public/{who}", b"x") == NOT_AUTHORIZED, who
        assert c.publish_reason(f"devices/{who}/x", b"x") == NOT_AUTHORIZED, who
    root.publish("devices/alice/secret", b"not for anon", qos=1)
    root.publish("public/news", b"hello", qos=1)

    assert received(root, 2) == [("devices/alice/secret", b"not for anon"),
                                 ("public/news", b"hello")]
    root.expect_none(root, "public/barrier")
    for c in (anon, bob, sharer):
        assert received(c, 1) == [("public/news", b"hello")]
        c.expect_none(root, "public/barrier-" + c.client_id)
    assert_no_topic(mqtt_cloud, "public/anon", "public/bob", "devices/anon/x", "devices/bob/x")


@pytest.mark.cloud_config(CONFIG)
def test_stored_subscription_no_longer_allowed_is_dropped_after_a_restart(mqtt_cloud):
    """alice's persistent session (3.1.1, clean session off) holds `devices/alice/#`,
    `$share/g/devices/alice/#` and `public/#`. The cloud restarts on the same data dir with rules that no longer let
    her read `devices/...`: the session resumes, the offline and live messages on
    `public/...` arrive, those on `devices/alice/...` do not (through neither
    subscription), and subscribing to it again is refused."""
    port = mqtt_cloud.mqtt_port
    alice = Client(port, 4, user="alice", client_id="cam1", clean=False)
    assert alice.subscribe_many(["devices/alice/#", "$share/g/devices/alice/#",
                                 "public/#"]) == [1, 1, 1]
    root = Client(port, 5, user="root")
    root.publish("devices/alice/before", b"before", qos=1)
    assert received(alice, 2) == [("devices/alice/before", b"before")] * 2
    alice.close()
    root.publish("devices/alice/offline", b"offline d", qos=1)
    root.publish("public/offline", b"offline p", qos=1)
    root.close()

    mqtt_cloud.config["acl"] = [
        {"user": "*", "read": ["public/#"]},
        {"user": "alice", "write": ["devices/%u/%c/up"]},
        {"user": "root", "read": ["#"], "write": ["#"], "admin": ["#"]},
    ]
    restart(mqtt_cloud, kill=False)
    port = mqtt_cloud.mqtt_port

    alice = Client(port, 4, user="alice", client_id="cam1", clean=False)
    assert alice.connack[0].session_present
    root = Client(port, 5, user="root")
    root.publish("devices/alice/live", b"live d", qos=1)
    root.publish("public/live", b"live p", qos=1)
    assert sorted(received(alice, 2)) == [("public/live", b"live p"),
                                          ("public/offline", b"offline p")]
    alice.expect_none(root, "public/barrier")
    assert alice.subscribe_many(["devices/alice/#"]) == [V311_SUBACK_FAILURE]


DENY_CONFIG = {
    "mqtt": {"credentials": MQTT_USERS, "allow_anonymous": True},
    "acl": [
        # The paho interoperability suite's broker setup: everything but one topic.
        {"user": "*", "read": ["#"], "write": ["#"], "deny": ["test/nosubscribe"],
         "groups": ["*"]},
        {"user": "alice", "deny": ["secret/#"]},
    ],
}


@pytest.mark.cloud_config(DENY_CONFIG)
def test_deny_wins_and_narrows_what_wide_subscriptions_deliver(mqtt_cloud):
    """`deny` beats any allow: a filter wholly within a denied one is refused, a wider
    filter is granted but delivers nothing from the denied topics (another client
    publishes to them), and publishing to a denied topic gets PUBACK 0x87."""
    port = mqtt_cloud.mqtt_port
    anon = Client(port, 5)
    alice = Client(port, 5, user="alice")
    assert anon.subscribe_many(["test/nosubscribe", "#", "test/+"]) == [NOT_AUTHORIZED, 1, 1]
    assert alice.subscribe_many(["secret/#", "secret/a", "#"]) == [
        NOT_AUTHORIZED, NOT_AUTHORIZED, 1]
    assert anon.publish_reason("test/nosubscribe", b"denied to all") == NOT_AUTHORIZED
    assert alice.publish_reason("secret/a", b"denied to alice") == NOT_AUTHORIZED
    # bob may write secret/a; anon's `#` receives it, alice's `#` must not.
    bob = Client(port, 5, user="bob")
    assert bob.publish_reason("secret/a", b"from bob") == 0
    assert bob.publish_reason("open/a", b"open") == 0
    assert received(anon, 2) == [("secret/a", b"from bob"), ("open/a", b"open")]
    assert received(alice, 1) == [("open/a", b"open")]
    alice.expect_none(bob, "open/barrier")
    anon.expect(1)  # the barrier
    anon.expect_none(bob, "open/barrier2")


@pytest.mark.cloud_config(CONFIG)
def test_a_kafka_header_cannot_move_a_record_to_another_topic(mqtt_cloud):
    """alice produces to her own topic with `mqtt.topic` naming bob's topic and
    `mqtt.retain` set: MQTT subscribers get the record under her topic, and bob's topic
    gets no retained message (else writing one's own Kafka topic would let one speak,
    and set retained messages, on any MQTT topic)."""
    port = mqtt_cloud.mqtt_port
    root = root_sink(port)
    p = ck_producer(mqtt_cloud.bootstrap, **sasl("alice"))
    p.produce("devices.alice.shared", value=b"spoof",
              headers=[("mqtt.topic", b"devices/bob/cmd"), ("mqtt.retain", b"true")])
    assert p.flush(30) == 0
    assert received(root, 1) == [("devices/alice/shared", b"spoof")]
    late = Client(port, 5, user="root")
    assert late.subscribe_many(["devices/bob/cmd", "devices/alice/shared"]) == [1, 1]
    # Only alice's topic holds a retained message.
    assert received(late, 1) == [("devices/alice/shared", b"spoof")]
    late.expect_none(root, "devices/bob/cmd")


# ---- Kafka ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.cloud_config(CONFIG)
def test_kafka_produce_fetch_and_metadata_follow_the_rules(mqtt_cloud):
    """confluent-kafka over SASL_PLAINTEXT. As alice: producing to `devices.alice.shared`
    (auto-created: she may write it) works; to `devices.bob.x` (invisible to her) and
    to `devices.alice.cam1.up` (visible, but her write rule needs an MQTT client id)
    fails with TOPIC_AUTHORIZATION_FAILED and stores nothing; she reads back and commits
    on `devices.alice.shared` in a group; consuming `private.stuff` reports
    TOPIC_AUTHORIZATION_FAILED and committing or fetching a committed offset on it is
    refused the same way;
    list_topics shows exactly the topics under her read rules, and a Metadata request
    naming an invisible topic answers TOPIC_AUTHORIZATION_FAILED."""
    cloud = mqtt_cloud
    bs = cloud.bootstrap
    root = sasl("root")
    for t in ("devices.bob.x", "devices.alice.cam1.up", "private.stuff", "public.news"):
        ck_produce(bs, t, [{"value": f"root:{t}".encode()}], **root)

    ck_produce(bs, "devices.alice.shared", [{"value": b"a1"}, {"value": b"a2"}], **sasl("alice"))
    err = produce_error(cloud, "alice", "devices.bob.x")
    assert err is not None and err.code() == TOPIC_AUTHORIZATION_FAILED, err
    err = produce_error(cloud, "alice", "devices.alice.cam1.up")
    assert err is not None and err.code() == TOPIC_AUTHORIZATION_FAILED, err
    for t in ("devices.bob.x", "devices.alice.cam1.up"):
        assert [r.value for r in ck_read_all(bs, t, conf=root)] == [f"root:{t}".encode()], t

    got = ck_read_all(bs, "devices.alice.shared", conf=sasl("alice"))
    assert [r.value for r in got] == [b"a1", b"a2"]

    c = ck_consumer(bs, group="alice-group", **sasl("alice"))
    try:
        c.subscribe(["devices.alice.shared"])
        msgs = []
        deadline = time.monotonic() + 30
        while len(msgs) < 2:
            assert time.monotonic() < deadline, f"group consumer got {len(msgs)} of 2"
            m = c.poll(0.2)
            if m is not None and not m.error():
                msgs.append(m)
        done = c.commit(message=msgs[-1], asynchronous=False)
        assert [(tp.topic, tp.offset, tp.error) for tp in done] == [
            ("devices.alice.shared", 2, None)]
        with pytest.raises(KafkaException) as ei:
            c.commit(offsets=[TopicPartition("private.stuff", 0, 1)], asynchronous=False)
        assert ei.value.args[0].code() == TOPIC_AUTHORIZATION_FAILED, ei.value
        own, other = c.committed([TopicPartition("devices.alice.shared", 0),
                                  TopicPartition("private.stuff", 0)], timeout=10)
        assert (own.offset, own.error) == (2, None), own
        assert other.error is not None and other.error.code() == TOPIC_AUTHORIZATION_FAILED, other
    finally:
        c.close()

    c = ck_consumer(bs, group="alice-sneaky", **sasl("alice"))
    try:
        c.subscribe(["private.stuff"])
        errors = []
        deadline = time.monotonic() + 30
        while not any(e.code() == TOPIC_AUTHORIZATION_FAILED for e in errors):
            assert time.monotonic() < deadline, f"no authorization error; errors: {errors}"
            m = c.poll(0.2)
            if m is None:
                continue
            assert m.error(), f"alice consumed {m.topic()}: {m.value()!r}"
            errors.append(m.error())
    finally:
        c.close()

    alice_admin = ck_admin(bs, **sasl("alice"))
    visible = set(alice_admin.list_topics(timeout=10).topics)
    assert visible == {"devices.alice.shared", "devices.alice.cam1.up", "public.news"}, visible
    assert {"devices.bob.x", "private.stuff"} <= kafka_topics(cloud)
    md = alice_admin.list_topics(topic="private.stuff", timeout=10)
    assert md.topics["private.stuff"].error.code() == TOPIC_AUTHORIZATION_FAILED
    # Naming a topic she may not see does not auto-create it either.
    md = alice_admin.list_topics(topic="devices.bob.new", timeout=10)
    assert md.topics["devices.bob.new"].error.code() == TOPIC_AUTHORIZATION_FAILED
    assert "devices.bob.new" not in kafka_topics(cloud)


@pytest.mark.cloud_config(CONFIG)
def test_kafka_fetch_needs_read_even_when_the_topic_is_visible(mqtt_cloud):
    """sensor may write `telemetry/#` and read nothing: its produce auto-creates
    `telemetry.t1`, it sees that topic (and only it) in Metadata and its offsets
    (ListOffsets), but its Fetch answers TOPIC_AUTHORIZATION_FAILED and yields no record."""
    bs = mqtt_cloud.bootstrap
    ck_produce(bs, "private.stuff", [{"value": b"p"}], **sasl("root"))
    ck_produce(bs, "telemetry.t1", [{"value": b"t"}], **sasl("sensor"))
    assert set(ck_admin(bs, **sasl("sensor")).list_topics(timeout=10).topics) == {"telemetry.t1"}
    c = ck_consumer(bs, **sasl("sensor"))
    try:
        tp = TopicPartition("telemetry.t1", 0, 0)
        assert c.get_watermark_offsets(tp, timeout=10, cached=False) == (0, 1)
        c.assign([tp])
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "no fetch error within 30 s"
            m = c.poll(0.2)
            if m is None:
                continue
            assert m.error(), f"sensor read {m.value()!r}"
            if m.error().code() == TOPIC_AUTHORIZATION_FAILED:
                break
    finally:
        c.close()
    assert [r.value for r in ck_read_all(bs, "telemetry.t1", conf=sasl("root"))] == [b"t"]


def refused(future):
    with pytest.raises(KafkaException) as ei:
        future.result(timeout=20)
    err = ei.value.args[0]
    assert err.code() == TOPIC_AUTHORIZATION_FAILED, err


@pytest.mark.timeout(120)
@pytest.mark.cloud_config(CONFIG)
def test_kafka_admin_requests_need_admin(mqtt_cloud):
    """alice may write `devices.alice.shared` but administer nothing: CreateTopics,
    DeleteTopics, CreatePartitions, IncrementalAlterConfigs and DeleteRecords answer
    TOPIC_AUTHORIZATION_FAILED and change nothing; root (admin on `#`) does each."""
    bs = mqtt_cloud.bootstrap
    ck_produce(bs, "devices.alice.shared", [{"value": b"v"}], **sasl("alice"))
    alice = ck_admin(bs, **sasl("alice"))
    root = ck_admin(bs, **sasl("root"))
    res = ConfigResource(ResourceType.TOPIC, "devices.alice.shared", incremental_configs=[
        ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET)])
    tp = TopicPartition("devices.alice.shared", 0, 1)

    refused(alice.create_topics([NewTopic("devices.alice.new", 1, 1)],
                                operation_timeout=10)["devices.alice.new"])
    refused(alice.delete_topics(["devices.alice.shared"],
                                operation_timeout=10)["devices.alice.shared"])
    refused(alice.create_partitions([NewPartitions("devices.alice.shared", 2)])[
        "devices.alice.shared"])
    refused(alice.incremental_alter_configs([res])[res])
    refused(alice.delete_records([tp])[tp])

    topics = root.list_topics(timeout=10).topics
    assert "devices.alice.new" not in topics
    assert len(topics["devices.alice.shared"].partitions) == 1
    assert [r.value for r in ck_read_all(bs, "devices.alice.shared", conf=sasl("root"))] == [b"v"]

    root.create_topics([NewTopic("devices.alice.new", 1, 1)],
                       operation_timeout=10)["devices.alice.new"].result(timeout=20)
    root.incremental_alter_configs([res])[res].result(timeout=20)
    assert root.delete_records([tp])[tp].result(timeout=20).low_watermark == 1
    root.create_partitions([NewPartitions("devices.alice.shared", 2)])[
        "devices.alice.shared"].result(timeout=20)
    root.delete_topics(["devices.alice.new"],
                       operation_timeout=10)["devices.alice.new"].result(timeout=20)
    wait_for(lambda: "devices.alice.new" not in kafka_topics(mqtt_cloud), 15,
             what="devices.alice.new deleted by root")
    assert len(root.list_topics(timeout=10).topics["devices.alice.shared"].partitions) == 2


@pytest.mark.timeout(120)
@pytest.mark.cloud_config(CONFIG)
def test_one_rule_governs_both_views_of_a_topic(mqtt_cloud):
    """alice (cam1) publishes over MQTT to `devices/alice/cam1/up` and reads it back over
    Kafka as `devices.alice.cam1.up`; what she produces over Kafka to
    `devices.alice.shared` reaches her MQTT subscription to `devices/alice/#`; bob cannot
    subscribe to her topic over MQTT, by name or by wildcard."""
    port = mqtt_cloud.mqtt_port
    alice = Client(port, 5, user="alice", client_id="cam1")
    assert alice.subscribe("devices/alice/#", qos=1)[0].value == 1
    assert alice.publish_reason("devices/alice/cam1/up", b"from mqtt") == 0
    assert received(alice, 1) == [("devices/alice/cam1/up", b"from mqtt")]

    got = ck_read_all(mqtt_cloud.bootstrap, "devices.alice.cam1.up", conf=sasl("alice"))
    assert [r.value for r in got] == [b"from mqtt"]

    ck_produce(mqtt_cloud.bootstrap, "devices.alice.shared", [{"value": b"from kafka"}],
               **sasl("alice"))
    assert received(alice, 1) == [("devices/alice/shared", b"from kafka")]

    bob = Client(port, 5, user="bob")
    assert bob.subscribe_many(["devices/alice/cam1/up", "devices/+/cam1/up",
                               "devices/alice/#"]) == [NOT_AUTHORIZED] * 3


@pytest.mark.timeout(120)
@pytest.mark.cloud_config(CONFIG)
def test_consumer_groups_need_a_grant_on_both_views(mqtt_cloud):
    """alice may use the groups `alice-*` (rule `%u-*`) and the everyone-groups: a Kafka
    consumer group of hers works, another's is refused (GROUP_AUTHORIZATION_FAILED, 30)
    for joining, listing, describing and deleting; an MQTT shared subscription is
    checked against the same names."""
    bs = mqtt_cloud.bootstrap
    ck_produce(bs, "devices.alice.g", [{"value": b"one"}, {"value": b"two"}], **sasl("root"))
    root = ck_consumer(bs, group="root-only", **sasl("root"))
    root.subscribe(["devices.alice.g"])
    wait_for(lambda: (m := root.poll(0.5)) is not None and m.error() is None, 30,
             what="root's group to read")
    root.commit(asynchronous=False)
    root.close()

    def polled(consumer, enough, what: str) -> list:
        """Everything `consumer` polls (records and errors) until `enough(polled)`."""
        out = []
        deadline = time.monotonic() + 30
        while not enough(out):
            assert time.monotonic() < deadline, f"{what}: {out}"
            m = consumer.poll(0.5)
            if m is not None:
                out.append(m)
        return out

    def values(msgs) -> list[bytes]:
        return [m.value() for m in msgs if m.error() is None]

    mine = ck_consumer(bs, group="alice-etl", **sasl("alice"))
    mine.subscribe(["devices.alice.g"])
    got = values(polled(mine, lambda ms: len(values(ms)) >= 2, "alice's group to read"))
    assert got == [b"one", b"two"]
    mine.commit(asynchronous=False)
    mine.close()

    theirs = ck_consumer(bs, group="root-only", **sasl("alice"))
    theirs.subscribe(["devices.alice.g"])
    msgs = polled(theirs, lambda ms: any(m.error() is not None for m in ms),
                  "no error for a group alice may not use")
    assert values(msgs) == [], "read records in root's group"
    errors = [m.error() for m in msgs]
    assert errors[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED, errors
    theirs.close()

    admin = ck_admin(bs, **sasl("alice"))
    listed = {g.group_id for g in admin.list_consumer_groups().result(timeout=30).valid}
    assert "alice-etl" in listed and "root-only" not in listed, listed
    with pytest.raises(KafkaException) as e:
        admin.delete_consumer_groups(["root-only"])["root-only"].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    root_admin = ck_admin(bs, **sasl("root"))
    listed = {g.group_id for g in root_admin.list_consumer_groups().result(timeout=30).valid}
    assert {"alice-etl", "root-only"} <= listed, "root sees every group; nothing deleted"

    port = mqtt_cloud.mqtt_port
    a = Client(port, 5, user="alice", client_id="cam1")
    assert a.subscribe_many(["$share/alice-w/devices/alice/#", "$share/bob-w/devices/alice/#",
                             "$share/g/public/#"]) == [1, NOT_AUTHORIZED, 1]


# ---- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("rules,names", [
    ([{"user": "*", "read": ["public/#"]}, {"user": "mallory", "read": ["#"]}],
     ["entry 1", "mallory", "mqtt.credentials"]),
    ([{"user": "*", "write": ["a/#/b"]}], ["entry 0", "write", "a/#/b"]),
    ([{"user": "alice", "read": ["devices/x%u/#"]}], ["entry 0", "read", "devices/x%u/#", "%u"]),
], ids=["unknown-user", "hash-not-last", "placeholder-inside-level"])
def test_bad_rules_stop_the_cloud_naming_acl_and_the_entry(cloud_factory, rules, names):
    """A rule for a user no listener can authenticate, a filter with `#` before its end,
    a placeholder that is not a whole level: the cloud exits before listening, naming
    `acl`, the entry and what is wrong with it."""
    c = cloud_factory({**CONFIG, "acl": rules}, start=False)
    with pytest.raises(CloudStartError):
        c.start()
    err = c.stderr_text()
    assert "acl" in err and all(n in err for n in names), err


def test_rules_may_name_users_known_to_either_listener(cloud_factory):
    """Control for the test above: users only in `kafka.sasl.users` or only in
    `mqtt.credentials` are known, and the cloud starts."""
    c = cloud_factory({"mqtt": {"credentials": {"m-only": "x"}},
                       "kafka": {"sasl": {"users": {"k-only": "y"}}},
                       "acl": [{"user": "m-only", "read": ["a/%c/#"]},
                               {"user": "k-only", "write": ["b/%u"]}]})
    assert c.alive()


# ---- client certificates name the user ---------------------------------------------------


@pytest.mark.timeout(120)
def test_client_certificates_name_the_user_on_both_listeners(cloud_factory, pki):
    """With a `client_ca` on the MQTTS and Kafka listeners, a client's certificate is
    its authentication and its common name its user (no password): the `client`
    certificate may use `devices/client/#` only, over MQTT and Kafka alike; the `edge`
    certificate everything. A client without a certificate does not get past the TLS
    handshake."""
    tls = {"cert": str(pki["cert"]), "key": str(pki["key"]), "client_ca": str(pki["ca"])}
    cloud = cloud_factory({
        "kafka": {"tls": tls},
        "mqtt": {"tls": {"listen": "127.0.0.1:0", **tls}},
        "acl": [{"user": "client", "read": ["devices/%u/#"], "write": ["devices/%u/#"],
                 "groups": ["pytest-*"]},
                {"user": "edge", "read": ["#"], "write": ["#"], "admin": ["#"], "groups": ["*"]}]})
    port = mqtt_port(cloud, "mqtts")

    def tls_for(who: str | None) -> dict:
        t = {"ca_certs": str(pki["ca"])}
        if who:
            t.update(certfile=str(pki[who][0]), keyfile=str(pki[who][1]))
        return t

    root = Client(port, 5, tls=tls_for("edge"))
    assert root.subscribe("#", qos=1)[0].value == 1
    dev = Client(port, 5, tls=tls_for("client"), client_id="cam")
    assert dev.subscribe_many(["devices/client/#", "devices/edge/#"]) == [1, NOT_AUTHORIZED]
    assert dev.publish_reason("devices/edge/x", b"not mine") == NOT_AUTHORIZED
    assert dev.publish_reason("devices/client/x", b"mine") == 0
    assert received(root, 1) == [("devices/client/x", b"mine")]
    assert received(dev, 1) == [("devices/client/x", b"mine")]

    # TLS 1.3: the client's half of the handshake may finish before the server refuses
    # it, so the refusal shows as an error at connect or the connection closing.
    nocert = Client(port, 5, tls=tls_for(None), connect=False)
    try:
        nocert.c.connect("127.0.0.1", port)
        nocert.c.loop_start()
        assert nocert.disconnected.wait(10), "a client without a certificate stays connected"
        nocert.c.loop_stop()
    except OSError:  # ssl.SSLError included
        pass
    assert not nocert._connected.is_set(), "CONNACK without a client certificate"

    def ssl(who: str) -> dict:
        return {"security.protocol": "SSL", "ssl.ca.location": str(pki["ca"]),
                "ssl.certificate.location": str(pki[who][0]),
                "ssl.key.location": str(pki[who][1])}

    assert [r.value for r in ck_read_all(cloud.bootstrap, "devices.client.x",
                                         conf=ssl("client"))] == [b"mine"]
    p = ck_producer(cloud.bootstrap, **ssl("client"), **{"message.timeout.ms": 15000})
    errs = []
    p.produce("devices.edge.y", value=b"no", on_delivery=lambda e, m: errs.append(e))
    assert p.flush(30) == 0
    assert errs[0] is not None and errs[0].code() == TOPIC_AUTHORIZATION_FAILED, errs
    md = ck_admin(cloud.bootstrap, **ssl("client")).list_topics(timeout=10)
    assert set(md.topics) == {"devices.client.x"}, set(md.topics)
    md = ck_admin(cloud.bootstrap, **ssl("edge")).list_topics(timeout=10)
    assert "devices.client.x" in md.topics


# ---- an edge replicating under the rules ------------------------------------------------


@pytest.mark.timeout(180)
def test_an_edge_refused_a_topic_keeps_its_records_until_the_rules_allow_it(
        cloud_factory, edge_factory):
    """The edge's uplink user may write `plant/ok/#` only. Records of another topic are
    refused (TOPIC_AUTHORIZATION_FAILED, counted by code on the edge) and stay in the
    edge's buffer, none dropped; once the cloud restarts with rules that allow them,
    every record of both topics arrives exactly once, in order."""
    users = {"edge": "e-pw", "root": "r-pw"}
    rules = [{"user": "edge", "write": ["plant/ok/#"]},
             {"user": "root", "read": ["#"], "write": ["#"], "admin": ["#"], "groups": ["*"]}]
    cloud = cloud_factory({"kafka": {"listen": f"127.0.0.1:{free_port()}",
                                     "sasl": {"users": users}},
                           "acl": rules})
    edge = edge_factory({"cloud": {"bootstrap": cloud.bootstrap, "sasl": {
        "mechanism": "PLAIN", "username": "edge", "password": users["edge"]}}})

    def publish(topic: str, n: int, start: int = 0):
        lines = "".join(f"{topic}-{i:04d}\n" for i in range(start, start + n))
        p = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(edge.v4[1]),
                            "-q", "1", "-i", f"pub-{topic.replace('/', '-')}", "-t", topic,
                            "-l"], input=lines.encode(), capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr

    def values(kafka_topic: str) -> list[bytes]:
        return [r.value for r in ck_read_all(cloud.bootstrap, kafka_topic,
                                             conf=sasl_root(users))]

    publish("plant/ok/a", 50)
    wait_for(lambda: edge.metrics().get("edge_uplink_records_total", 0) >= 50, 60,
             what=lambda: f"allowed records to go up: {edge.metrics()}")
    publish("plant/no/b", 20)
    refused = 'edge_uplink_produce_errors_total{code="29"}'
    wait_for(lambda: edge.metrics().get(refused, 0) >= 2, 60,
             what=lambda: f"refusals counted: {edge.metrics()}\n{edge.stderr_tail()}")
    m = edge.metrics()
    assert m["edge_backlog_records"] >= 20, m
    assert m.get('edge_buffer_dropped_records{reason="drop_oldest"}', 0) == 0, m

    cloud.config["acl"][0]["write"] = ["plant/#"]
    cloud.restart(kill=False)
    publish("plant/ok/a", 10, start=50)
    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0, 90,
             what=lambda: f"backlog to drain: {edge.metrics()}\n{edge.stderr_tail()}")
    assert values("plant.ok.a") == [f"plant/ok/a-{i:04d}".encode() for i in range(60)]
    assert values("plant.no.b") == [f"plant/no/b-{i:04d}".encode() for i in range(20)]


def sasl_root(users: dict) -> dict:
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN",
            "sasl.username": "root", "sasl.password": users["root"]}
