"""SASL/SCRAM-SHA-256 and SCRAM-SHA-512 (Kafka's KIP-84) on the cloud's Kafka listener,
driven by kcat, confluent-kafka and kafka-python, and by the edge's uplink; a wrong
password and a mechanism the listener does not enable are refused, and the broker keeps
serving. PLAIN and SCRAM check the same `kafka.sasl.users`."""

from __future__ import annotations

import subprocess

import pytest

from edge_fixtures import Publisher, edge_factory  # noqa: F401
from helpers import (ck_produce, ck_read_all, kcat_consume, kcat_produce, kp_produce, kp_read_all,
                     wait_for)

USERS = {"alice": "alice-secret", "edge": "edge,pass=word"}
ALL = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def sasl_cloud(cloud_factory, mechanisms=ALL, **kw):
    return cloud_factory({"kafka": {"sasl": {"mechanisms": mechanisms, "users": dict(USERS)}}}, **kw)


def rd(mech: str, user: str = "alice", password: str | None = None) -> dict:
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": mech,
            "sasl.username": user, "sasl.password": USERS[user] if password is None else password}


def x(conf: dict) -> list[str]:
    return [a for k, v in conf.items() for a in ("-X", f"{k}={v}")]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_clients_produce_and_consume_over_scram(cloud_factory, topic_name, mech):
    cloud = sasl_cloud(cloud_factory)
    conf = rd(mech)
    kcat_produce(cloud.bootstrap, topic_name, [f"kcat-{i}" for i in range(10)], extra=x(conf))
    ck_produce(cloud.bootstrap, topic_name, [{"value": f"ck-{i}".encode()} for i in range(10)],
               **conf)
    kp = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mech,
          "sasl_plain_username": "alice", "sasl_plain_password": USERS["alice"]}
    kp_produce(cloud.bootstrap, topic_name, [{"value": f"kp-{i}".encode()} for i in range(10)], **kp)
    want = [f"{c}-{i}".encode() for c in ("kcat", "ck", "kp") for i in range(10)]
    assert [r.value for r in kcat_consume(cloud.bootstrap, topic_name, extra=x(conf))] == want
    assert [r.value for r in ck_read_all(cloud.bootstrap, topic_name, conf=conf)] == want
    assert [r.value for r in kp_read_all(cloud.bootstrap, topic_name, **kp)] == want
    # The same users authenticate with PLAIN on the same listener.
    assert [r.value for r in ck_read_all(cloud.bootstrap, topic_name, conf=rd("PLAIN"))] == want


@pytest.mark.timeout(120)
def test_wrong_scram_password_and_disabled_mechanism_are_refused(cloud_factory, topic_name):
    cloud = sasl_cloud(cloud_factory)
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        for conf in (rd(mech, password="nope"), rd(mech, user="edge", password="alice-secret")):
            p = subprocess.run(["kcat", "-b", cloud.bootstrap, "-L", *x(conf), "-m", "5"],
                               capture_output=True, timeout=30)
            assert p.returncode != 0
            assert b"Authentication failed" in p.stderr, p.stderr[-2000:]
    plain_only = sasl_cloud(cloud_factory, mechanisms=["PLAIN"], name="plain-only")
    p = subprocess.run(["kcat", "-b", plain_only.bootstrap, "-L", *x(rd("SCRAM-SHA-256")),
                        "-m", "5"], capture_output=True, timeout=30)
    assert p.returncode != 0
    assert b"SCRAM-SHA-256" in p.stderr and b"PLAIN" in p.stderr, p.stderr[-2000:]
    # Both still serve correct clients.
    kcat_produce(cloud.bootstrap, topic_name, ["ok"], extra=x(rd("SCRAM-SHA-512")))
    assert [r.value for r in kcat_consume(cloud.bootstrap, topic_name,
                                          extra=x(rd("SCRAM-SHA-256")))] == [b"ok"]
    kcat_produce(plain_only.bootstrap, topic_name, ["ok"], extra=x(rd("PLAIN")))
    cloud.assert_alive()
    plain_only.assert_alive()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_edge_uplink_over_scram(cloud_factory, edge_factory, mech):
    """The edge pushes into a listener with SCRAM only (as MSK, Aiven and Strimzi's
    defaults are); a user name and password with `,` and `=` cross SCRAM's escaping. A
    wrong password keeps the records buffered, counted as reconnects."""
    cloud = sasl_cloud(cloud_factory, mechanisms=[mech])
    sasl = {"mechanism": mech, "username": "edge", "password": USERS["edge"]}
    bad = edge_factory({"cloud": {"bootstrap": cloud.bootstrap,
                                  "sasl": {**sasl, "password": "wrong"}}}, name="bad")
    p = Publisher(bad.v4, "bad")
    p.publish("scram/a", b"held")
    wait_for(lambda: bad.metrics().get("edge_uplink_reconnects_total", 0) >= 2, 30,
             what=lambda: f"refused sessions: {bad.metrics()}")
    assert bad.metrics()["edge_backlog_records"] == 1
    assert "Authentication failed" in bad.stderr_tail(50)
    p.close()
    bad.stop()

    edge = edge_factory({"cloud": {"bootstrap": cloud.bootstrap, "sasl": sasl}})
    p = Publisher(edge.v4, "good")
    for i in range(20):
        p.publish("scram/a", f"m{i}".encode())
    wait_for(lambda: edge.metrics().get("edge_uplink_records_total") == 20, 30,
             what=lambda: f"uplinked: {edge.metrics()}\n{edge.stderr_tail()}")
    got = ck_read_all(cloud.bootstrap, "scram.a", conf=rd(mech))
    assert [r.value for r in got] == [f"m{i}".encode() for i in range(20)]
