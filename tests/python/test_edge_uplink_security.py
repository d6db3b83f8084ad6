"""Edge -> cloud over mutual TLS + SASL_SSL, end to end with real clients: mosquitto_pub
publishes to the edge, kcat (with its own client certificate and password) reads from the
cloud. A wrong CA, a wrong password or a missing client certificate keeps every record in
the edge's buffer (backlog metric), the edge's log says why, and after a restart with the
right settings every record arrives exactly once, in order."""

from __future__ import annotations

import os
import subprocess

import pytest

from edge_fixtures import edge_binary, edge_factory  # noqa: F401
from helpers import kcat_consume, wait_for
from test_kafka_security import USERS, kcat_x, listener_config, pki, rdkafka_conf  # noqa: F401

TOPIC = "secure/line1"
KAFKA_TOPIC = "secure.line1"


def edge_security(pki, ca="ca", cert=True, password=None) -> dict:
    tls = {"ca": str(pki[ca])}
    if cert:
        tls.update(cert=str(pki["edge"][0]), key=str(pki["edge"][1]))
    return {"tls": tls, "sasl": {"mechanism": "PLAIN", "username": "edge",
                                 "password": USERS["edge"] if password is None else password}}


def mosquitto_publish(edge, n: int, start: int = 0):
    lines = "".join(f"m{i:05d}\n" for i in range(start, start + n))
    p = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(edge.v4[1]), "-q", "1",
                        "-i", "sensor-1", "-t", TOPIC, "-l"], input=lines.encode(),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr


def read_cloud(cloud, pki) -> list[bytes]:
    """Every value of the topic, read by kcat as user alice with its own certificate."""
    conf = rdkafka_conf("sasl_ssl", pki, user="alice")
    conf["ssl.certificate.location"], conf["ssl.key.location"] = map(str, pki["client"])
    return [r.value for r in kcat_consume(cloud.bootstrap, KAFKA_TOPIC, extra=kcat_x(conf))]


def secure_cloud(cloud_factory, pki):
    cfg = listener_config("sasl_ssl", pki)
    cfg["kafka"]["tls"]["client_ca"] = str(pki["ca"])
    return cloud_factory(cfg)


@pytest.mark.timeout(180)
def test_edge_to_cloud_over_mtls_and_sasl_ssl(cloud_factory, edge_factory, pki):
    cloud = secure_cloud(cloud_factory, pki)
    edge = edge_factory({"cloud": {"bootstrap": cloud.bootstrap, **edge_security(pki)}})
    mosquitto_publish(edge, 200)
    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0
             and edge.metrics().get("edge_uplink_records_total") == 200, 60,
             what=lambda: f"uplink to drain: {edge.metrics()}\n{edge.stderr_tail()}")
    assert read_cloud(cloud, pki) == [f"m{i:05d}".encode() for i in range(200)]
    assert edge.metrics()["edge_uplink_up"] == 1


@pytest.mark.timeout(180)
def test_large_batches_cross_mtls_intact(cloud_factory, edge_factory, pki):
    """Produce batches of hundreds of kilobytes go out in pieces (request fields, then each
    batch by reference) through TLS, which takes one piece per write: every record still
    arrives intact, once, in order."""
    cloud = secure_cloud(cloud_factory, pki)
    edge = edge_factory({"cloud": {"bootstrap": cloud.bootstrap, **edge_security(pki)}})
    # Random hex does not compress below half, so each batch stays far above the size
    # from which the edge sends it by reference (4 KiB).
    lines = [f"{i:05d}-{os.urandom(500).hex()}" for i in range(2000)]
    p = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(edge.v4[1]), "-q", "1",
                        "-i", "camera-1", "-t", TOPIC, "-l"],
                       input="".join(f"{line}\n" for line in lines).encode(),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0
             and edge.metrics().get("edge_uplink_records_total") == 2000, 60,
             what=lambda: f"uplink to drain: {edge.metrics()}\n{edge.stderr_tail()}")
    assert read_cloud(cloud, pki) == [line.encode() for line in lines]
    sent = edge.metrics()["edge_uplink_wire_bytes_total"]
    assert sent > 1_000_000, f"{sent} bytes on the wire: batches too small to test splicing"


BAD = {
    "wrong_ca": ({"ca": "other_ca"}, ["tls: handshake with", "invalid peer certificate"]),
    "wrong_password": ({"password": "guess"},
                       ["sasl authentication failed", "Invalid username or password"]),
    "no_client_cert": ({"cert": False}, ["tls:", "CertificateRequired"]),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_uplink_security_keeps_records_buffered(cloud_factory, edge_factory, pki, case):
    cloud = secure_cloud(cloud_factory, pki)
    bad, reasons = BAD[case]
    edge = edge_factory({"cloud": {"bootstrap": cloud.bootstrap, **edge_security(pki, **bad)}})
    mosquitto_publish(edge, 50)
    # Everything accepted stays in the buffer; the uplink is down and keeps retrying.
    wait_for(lambda: (lambda m: m.get("edge_backlog_records") == 50
                      and m.get("edge_uplink_up") == 0
                      and m.get("edge_uplink_reconnects_total", 0) >= 3)(edge.metrics()), 60,
             what=lambda: f"retries with the backlog kept: {edge.metrics()}")
    log = edge.stderr_path.read_text(errors="replace")
    for r in reasons:
        assert r in log, f"{r!r} not in the edge log\n{edge.stderr_tail()}"
    assert "uplink session ended" in log
    assert edge.metrics().get("edge_uplink_records_total", 0) == 0
    cloud.assert_alive()
    # Restart the edge with the right settings: everything arrives, exactly once.
    edge.stop()
    edge.config["cloud"].update(edge_security(pki))
    edge.start()
    mosquitto_publish(edge, 10, start=50)
    wait_for(lambda: edge.metrics().get("edge_backlog_records") == 0
             and edge.metrics().get("edge_uplink_records_total") == 60, 60,
             what=lambda: f"uplink to drain: {edge.metrics()}\n{edge.stderr_tail()}")
    assert read_cloud(cloud, pki) == [f"m{i:05d}".encode() for i in range(60)]


@pytest.mark.parametrize("cloud_cfg,key", [
    ({"tls": {"ca": "MISSING"}}, "cloud.tls.ca"),
    ({"tls": {"cert": "MISSING", "key": "MISSING"}}, "cloud.tls.cert"),
    ({"tls": {"cert": "CERT"}}, "cloud.tls.key"),
    ({"sasl": {"username": "u"}}, "cloud.sasl"),
])
def test_edge_config_errors_name_the_key(tmp_path, pki, cloud_cfg, key):
    from conftest import to_yaml
    subst = {"MISSING": str(tmp_path / "missing.pem"), "CERT": str(pki["edge"][0])}
    sec = {k: {f: subst.get(v, v) for f, v in d.items()} for k, d in cloud_cfg.items()}
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(to_yaml({"data_dir": str(tmp_path / "d"), "cloud": sec}) + "\n")
    p = subprocess.run([str(edge_binary()), "--config", str(cfg)], capture_output=True, timeout=30)
    assert p.returncode == 2, p.stderr
    assert f": {key}: ".encode() in p.stderr, p.stderr
