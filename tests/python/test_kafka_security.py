"""The cloud's Kafka listener with TLS, mutual TLS and SASL/PLAIN (security protocols
SSL, SASL_PLAINTEXT, SASL_SSL), driven by kcat, confluent-kafka and kafka-python; and
the rejections: wrong password, missing or foreign client certificate, plaintext to a
TLS port, garbage inside TLS, requests before authentication. After each rejection the
broker keeps serving correct clients."""

from __future__ import annotations

import os
import ssl
import subprocess

import pytest

from conftest import cloud_binary
from helpers import ck_produce, ck_read_all, kcat, kcat_consume, kcat_produce, kp_produce, kp_read_all, make_certs
from kwire import (API_METADATA, API_SASL_AUTHENTICATE, API_SASL_HANDSHAKE, KConn, W, api_versions,
                   plain_token, sasl_authenticate, sasl_handshake)

USERS = {"alice": "alice-secret", "edge": "edge-secret"}
MODES = ["ssl", "mtls", "sasl_plaintext", "sasl_ssl"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Our CA (server leaf, clients `client` and `edge`) and a foreign CA (client `rogue`)."""
    d = tmp_path_factory.mktemp("pki")
    ca, cert, key = make_certs(d, clients=("client", "edge"))
    make_certs(d, name="other", clients=("rogue",))
    return {"ca": ca, "cert": cert, "key": key, "client": (d / "client.pem", d / "client.key"),
            "edge": (d / "edge.pem", d / "edge.key"), "rogue": (d / "rogue.pem", d / "rogue.key"),
            "other_ca": d / "otherca.pem"}


def listener_config(mode: str, pki) -> dict:
    k: dict = {}
    if mode in ("ssl", "mtls", "sasl_ssl"):
        k["tls"] = {"cert": str(pki["cert"]), "key": str(pki["key"])}
        if mode == "mtls":
            k["tls"]["client_ca"] = str(pki["ca"])
    if mode.startswith("sasl"):
        k["sasl"] = {"users": dict(USERS)}
    return {"kafka": k}


def rdkafka_conf(mode: str, pki, user: str = "alice", password: str | None = None,
                 cert: str | None = "client") -> dict:
    """librdkafka settings (kcat -X and confluent-kafka take the same names)."""
    c = {"security.protocol": mode.upper() if mode != "mtls" else "SSL"}
    if mode in ("ssl", "mtls", "sasl_ssl"):
        c["ssl.ca.location"] = str(pki["ca"])
    if mode == "mtls" and cert:
        c["ssl.certificate.location"] = str(pki[cert][0])
        c["ssl.key.location"] = str(pki[cert][1])
    if mode.startswith("sasl"):
        c.update({"sasl.mechanisms": "PLAIN", "sasl.username": user,
                  "sasl.password": USERS[user] if password is None else password})
    return c


def kcat_x(conf: dict) -> list[str]:
    out = []
    for k, v in conf.items():
        out += ["-X", f"{k}={v}"]
    return out


def kp_conf(mode: str, pki) -> dict:
    c = {"security_protocol": mode.upper() if mode != "mtls" else "SSL"}
    if mode in ("ssl", "mtls", "sasl_ssl"):
        c["ssl_cafile"] = str(pki["ca"])
    if mode == "mtls":
        c["ssl_certfile"], c["ssl_keyfile"] = str(pki["client"][0]), str(pki["client"][1])
    if mode.startswith("sasl"):
        c.update(sasl_mechanism="PLAIN", sasl_plain_username="alice",
                 sasl_plain_password=USERS["alice"])
    return c


def tls_context(pki, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if cert:
        ctx.load_cert_chain(str(pki[cert][0]), str(pki[cert][1]))
    return ctx


def assert_serves(cloud, mode, pki, topic="still.serving"):
    """A correct client still produces and reads back."""
    conf = rdkafka_conf(mode, pki)
    value = os.urandom(8).hex()
    kcat_produce(cloud.bootstrap, topic, [value], extra=kcat_x(conf))
    recs = kcat_consume(cloud.bootstrap, topic, extra=kcat_x(conf))
    assert value.encode() in [r.value for r in recs]
    cloud.assert_alive()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", MODES)
def test_clients_produce_and_consume(cloud_factory, pki, topic_name, mode):
    cloud = cloud_factory(listener_config(mode, pki))
    conf = rdkafka_conf(mode, pki)
    lines = [f"kcat-{i}" for i in range(20)]
    kcat_produce(cloud.bootstrap, topic_name, lines, codec="zstd", extra=kcat_x(conf))
    ck_produce(cloud.bootstrap, topic_name, [{"value": f"ck-{i}".encode()} for i in range(20)],
               **conf)
    kp_produce(cloud.bootstrap, topic_name, [{"value": f"kp-{i}".encode()} for i in range(20)],
               **kp_conf(mode, pki))
    want = [x.encode() for x in lines] + [f"ck-{i}".encode() for i in range(20)] + \
        [f"kp-{i}".encode() for i in range(20)]
    assert [r.value for r in kcat_consume(cloud.bootstrap, topic_name, extra=kcat_x(conf))] == want
    assert [r.value for r in ck_read_all(cloud.bootstrap, topic_name, conf=conf)] == want
    assert [r.value for r in kp_read_all(cloud.bootstrap, topic_name, **kp_conf(mode, pki))] == want


def test_sasl_apis_advertised_only_with_sasl(cloud_factory, pki):
    plain = cloud_factory(name="plain")
    with KConn("127.0.0.1", plain.port) as c:
        apis = api_versions(c).apis
    assert API_SASL_HANDSHAKE not in apis and API_SASL_AUTHENTICATE not in apis
    sasl = cloud_factory(listener_config("sasl_plaintext", pki), name="sasl")
    with KConn("127.0.0.1", sasl.port) as c:
        apis = api_versions(c).apis
    assert apis[API_SASL_HANDSHAKE] == (0, 1) and apis[API_SASL_AUTHENTICATE] == (0, 2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["sasl_plaintext", "sasl_ssl"])
def test_wrong_password_is_refused_and_broker_keeps_serving(cloud_factory, pki, mode):
    cloud = cloud_factory(listener_config(mode, pki))
    # librdkafka reports the broker's message.
    bad = rdkafka_conf(mode, pki, password="nope")
    p = subprocess.run(["kcat", "-b", cloud.bootstrap, "-L", *kcat_x(bad), "-m", "5"],
                       capture_output=True, timeout=30)
    assert p.returncode != 0
    assert b"Authentication failed" in p.stderr, p.stderr[-2000:]
    # On the wire: error 58 with a message, then the connection is closed.
    ctx = tls_context(pki) if mode == "sasl_ssl" else None
    with KConn("127.0.0.1", cloud.port, ssl_context=ctx) as c:
        api_versions(c)
        assert sasl_handshake(c) == (0, ["PLAIN"])
        err, msg = sasl_authenticate(c, plain_token("alice", "wrong"))
        assert err == 58 and "Authentication failed" in msg, (err, msg)
        assert c.closed_by_peer_within(5)[0]
    with KConn("127.0.0.1", cloud.port, ssl_context=ctx) as c:
        sasl_handshake(c)
        assert sasl_authenticate(c, plain_token("mallory", "x"))[0] == 58
    assert_serves(cloud, mode, pki)


def test_requests_before_authentication_close_the_connection(cloud_factory, pki):
    cloud = cloud_factory(listener_config("sasl_plaintext", pki))
    with KConn("127.0.0.1", cloud.port) as c:
        api_versions(c)  # allowed before authentication
        _, frame = c.frame(API_METADATA, 1, W().i32(-1).bytes(), 1)
        c.send_raw(frame)
        closed, got = c.closed_by_peer_within(5)
        assert closed and got == b""
    # SaslAuthenticate without a handshake: ILLEGAL_SASL_STATE, closed.
    with KConn("127.0.0.1", cloud.port) as c:
        assert sasl_authenticate(c, plain_token("alice", USERS["alice"]))[0] == 34
        assert c.closed_by_peer_within(5)[0]
    # Unknown mechanism: error 33 with the offered list.
    with KConn("127.0.0.1", cloud.port) as c:
        assert sasl_handshake(c, "SCRAM-SHA-256") == (33, ["PLAIN"])
    # After authenticating, Metadata is served.
    with KConn("127.0.0.1", cloud.port) as c:
        assert sasl_handshake(c)[0] == 0
        assert sasl_authenticate(c, plain_token("alice", USERS["alice"])) == (0, None)
        _, frame = c.request(API_METADATA, 1, W().i32(-1).bytes(), 1)
        assert len(frame) > 8
    assert_serves(cloud, "sasl_plaintext", pki)


def test_sasl_handshake_v0_bare_token(cloud_factory, pki):
    """Pre-KIP-152 clients send the PLAIN token as a bare frame after SaslHandshake v0."""
    import struct
    cloud = cloud_factory(listener_config("sasl_plaintext", pki))
    with KConn("127.0.0.1", cloud.port) as c:
        assert sasl_handshake(c, version=0) == (0, ["PLAIN"])
        tok = plain_token("edge", USERS["edge"])
        c.send_raw(struct.pack(">i", len(tok)) + tok)
        assert c.recv_frame() == b""  # an empty frame: authenticated
        _, frame = c.request(API_METADATA, 1, W().i32(-1).bytes(), 1)
        assert len(frame) > 8
    with KConn("127.0.0.1", cloud.port) as c:
        sasl_handshake(c, version=0)
        tok = plain_token("edge", "wrong")
        c.send_raw(struct.pack(">i", len(tok)) + tok)
        assert c.closed_by_peer_within(5) == (True, b"")


@pytest.mark.timeout(120)
def test_mutual_tls_rejections(cloud_factory, pki):
    cloud = cloud_factory(listener_config("mtls", pki))
    # kcat without a client certificate fails; with ours it works (assert_serves below).
    p = subprocess.run(["kcat", "-b", cloud.bootstrap, "-L", "-m", "5",
                        *kcat_x(rdkafka_conf("mtls", pki, cert=None))], capture_output=True, timeout=30)
    assert p.returncode != 0, p.stdout
    # Raw TLS: without a certificate, or with one from another CA, the server refuses
    # (TLS 1.3 reports it on the first read) and no Kafka response ever comes.
    for cert in (None, "rogue"):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with KConn("127.0.0.1", cloud.port, ssl_context=tls_context(pki, cert)) as c:
                api_versions(c)
    with KConn("127.0.0.1", cloud.port, ssl_context=tls_context(pki, "client")) as c:
        assert api_versions(c).error_code == 0
    assert "tls handshake failed" in cloud.stderr_text()
    assert_serves(cloud, "mtls", pki)


@pytest.mark.parametrize("mode", ["ssl", "sasl_ssl"])
def test_plaintext_and_garbage_on_tls_port(cloud_factory, pki, mode):
    cloud = cloud_factory(listener_config(mode, pki))
    # A plaintext Kafka client: its ApiVersions is not a TLS ClientHello.
    with KConn("127.0.0.1", cloud.port) as c:
        _, frame = c.frame(18, 0, b"", 1)
        c.send_raw(frame)
        closed, got = c.closed_by_peer_within(10)
        assert closed and not got.startswith(b"\x00\x00"), got[:16]
    # Garbage after a good handshake: an absurd frame length, then random bytes.
    with KConn("127.0.0.1", cloud.port, ssl_context=tls_context(pki)) as c:
        c.send_raw(b"\x7f\xff\xff\xff" + os.urandom(64))
        assert c.closed_by_peer_within(10)[0]
    # Garbage instead of a ClientHello.
    with KConn("127.0.0.1", cloud.port) as c:
        c.send_raw(os.urandom(512))
        assert c.closed_by_peer_within(10)[0]
    assert_serves(cloud, mode, pki)


@pytest.mark.parametrize("bad,key", [
    ({"tls": {"cert": "MISSING", "key": "KEY"}}, "kafka.tls.cert"),
    ({"tls": {"cert": "CERT", "key": "MISSING"}}, "kafka.tls.key"),
    ({"tls": {"cert": "CERT", "key": "KEY", "client_ca": "MISSING"}}, "kafka.tls.client_ca"),
    ({"tls": {"cert": "KEY", "key": "KEY"}}, "kafka.tls.cert"),
])
def test_config_errors_name_the_key(tmp_path, pki, bad, key):
    subst = {"MISSING": str(tmp_path / "missing.pem"), "CERT": str(pki["cert"]),
             "KEY": str(pki["key"])}
    tls = {k: subst[v] for k, v in bad["tls"].items()}
    cfg = tmp_path / "c.yaml"
    lines = [f"data_dir: {tmp_path / 'd'}", "mqtt:", "  listen: 127.0.0.1:0", "kafka:",
             "  listen: 127.0.0.1:0", "  tls:"] + [f"    {k}: {v}" for k, v in tls.items()]
    cfg.write_text("\n".join(lines) + "\n")
    p = subprocess.run([str(cloud_binary()), "--config", str(cfg)], capture_output=True, timeout=30)
    assert p.returncode != 0
    assert key.encode() in p.stderr, p.stderr


def test_kcat_sees_advertised_tls_listener(cloud_factory, pki):
    """Metadata advertises the listener's host:port; a TLS client follows it."""
    cloud = cloud_factory(listener_config("sasl_ssl", pki))
    p = kcat(["-b", cloud.bootstrap, "-L", "-J", *kcat_x(rdkafka_conf("sasl_ssl", pki))])
    import json
    md = json.loads(p.stdout)
    assert [(b["name"]) for b in md["brokers"]] == [cloud.bootstrap]
