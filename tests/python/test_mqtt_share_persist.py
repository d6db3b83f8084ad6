"""MQTT shared subscriptions keep their place in the log: a group whose last member left,
and every group across a cloud restart (clean stop or SIGKILL), resumes where it stopped,
so messages published while it had no member are delivered when a member joins again.

Also the MQTT 5 DISCONNECT drain: after the cloud sends a DISCONNECT it drains the
client's unread input (up to 500 ms) so the client reads the DISCONNECT instead of a reset.

Synchronisation without sleeps:
- Members acknowledge (PUBACK) inside paho's message callback, before the message is
  queued for the test, so the PUBACK is on the wire ahead of anything the test sends next.
- `left(port, client_id)`: connecting again with a leaving member's client id returns
  its CONNACK only once the old connection is gone, and a connection leaves its share
  groups (storing their positions durably) before it lets go of its client id.
"""

from __future__ import annotations

import socket
import struct
import subprocess

import pytest

from mqtt_fixtures import Mqtt, mqtt_cloud, raw, restart, varint  # noqa: F401
from test_mqtt_features import _raw_v311_subscriber

GROUP = "$share/workers/jobs/t"
TOPIC = "jobs/t"


def member(port: int, client_id: str | None = None) -> Mqtt:
    """An MQTT 5 member that acknowledges each QoS 1 message before the test sees it."""
    m = Mqtt(port, 5, client_id=client_id, connect=False)
    m.c.manual_ack_set(True)

    def on_message(c, _userdata, msg):
        if msg.qos > 0:
            c.ack(msg.mid, msg.qos)
        m.messages.put(msg)

    m.c.on_message = on_message
    m.connect()
    return m


def left(port: int, client_id: str):
    """Returns once the connection of `client_id` has ended (see the module doc)."""
    Mqtt(port, 5, client_id=client_id).close()


def payloads(m: Mqtt, n: int) -> list[bytes]:
    return [x.payload for x in m.expect(n)]


def publish_all(port: int, msgs: list[bytes]):
    pub = Mqtt(port, 5)
    for p in msgs:
        pub.publish(TOPIC, p, qos=1)
    pub.close()


def test_group_resumes_after_its_last_member_left(mqtt_cloud):
    """Fails if an empty group forgets its positions (it would restart at the end)."""
    port = mqtt_cloud.mqtt_port
    publish_all(port, [b"before-the-group"])
    a = member(port)
    assert a.subscribe(GROUP, qos=1)[0].value == 1
    publish_all(port, [b"m0"])
    assert payloads(a, 1) == [b"m0"]
    a.close()
    left(port, a.client_id)
    missed = [f"m{i}".encode() for i in range(1, 6)]
    publish_all(port, missed)
    b = member(port)
    b.subscribe(GROUP, qos=1)
    assert payloads(b, len(missed)) == missed, "what was published while the group was empty"
    probe = Mqtt(port, 5)
    b.expect_none(probe, TOPIC)  # nothing before the group existed, m0 not again
    # Another group on the same filter is a different position: it starts at the end.
    c = member(port)
    c.subscribe("$share/others/jobs/t", qos=1)
    b.close()
    c.expect_none(probe, TOPIC)


def test_unacknowledged_deliveries_of_the_last_member_go_to_the_next(mqtt_cloud):
    """The last member leaves with QoS 1 messages it never acknowledged: they are part of
    the group's stored position, so the next member gets them (and what came after)."""
    port = mqtt_cloud.mqtt_port
    silent = _raw_v311_subscriber(port, GROUP, "silent-last-member")
    sent = [f"u{i}".encode() for i in range(5)]
    publish_all(port, sent)
    silent.settimeout(10)
    data = b""
    while sent[-1] not in data:
        chunk = silent.recv(65536)
        assert chunk, "silent member closed"
        data += chunk
    silent.close()
    left(port, "silent-last-member")
    publish_all(port, [b"u5"])
    b = member(port)
    b.subscribe(GROUP, qos=1)
    assert payloads(b, 6) == sent + [b"u5"]


def test_topic_created_while_the_group_was_empty_is_read_from_its_start(mqtt_cloud):
    port = mqtt_cloud.mqtt_port
    a = member(port)
    a.subscribe("$share/w/fresh/#", qos=1)
    a.close()
    left(port, a.client_id)
    pub = Mqtt(port, 5)
    pub.publish("fresh/x", b"first", qos=1)
    b = member(port)
    b.subscribe("$share/w/fresh/#", qos=1)
    assert payloads(b, 1) == [b"first"]


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_group_resumes_across_restart(cloud_factory, how):
    """The group's last member left before the restart; messages published after it are
    delivered to the next member after the restart, whether the cloud was stopped (SIGTERM)
    or killed (SIGKILL): the positions were stored durably when the member left. Fails
    if positions are not persisted (the restarted group would start at the end)."""
    from mqtt_fixtures import start_mqtt_cloud

    cloud = start_mqtt_cloud(cloud_factory)
    port = cloud.mqtt_port
    a = member(port)
    a.subscribe(GROUP, qos=1)
    publish_all(port, [b"seen"])
    assert payloads(a, 1) == [b"seen"]
    a.close()
    left(port, a.client_id)
    missed = [f"r{i}".encode() for i in range(5)]
    publish_all(port, missed)
    restart(cloud, kill=(how == "kill"))
    port = cloud.mqtt_port
    # mosquitto_sub as the member that resumes the group (the messages are in the log
    # already: no need to wait for its SUBACK before they can arrive).
    sub = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1",
                          "-t", GROUP, "-C", str(len(missed)), "-W", "20"],
                         capture_output=True, timeout=30)
    assert sub.returncode == 0, sub.stderr.decode()
    assert sub.stdout.decode().split() == [p.decode() for p in missed]
    b = member(port)
    b.subscribe(GROUP, qos=1)
    b.expect_none(Mqtt(port, 5), TOPIC)  # "seen" is not delivered again


def cloud_with_a_busy_member(cloud_factory):
    """A cloud whose group has one member that received (and acknowledged) 5 messages."""
    from mqtt_fixtures import start_mqtt_cloud

    cloud = start_mqtt_cloud(cloud_factory)
    port = cloud.mqtt_port
    a = member(port)
    a.subscribe(GROUP, qos=1)
    done = [f"d{i}".encode() for i in range(5)]
    publish_all(port, done)
    assert payloads(a, len(done)) == done
    return cloud, a, done


def restart_publish_and_rejoin(cloud, old_member, kill: bool):
    """Restarts the cloud, publishes 5 new messages, and subscribes a new member; returns
    (port, the new messages, the new member)."""
    restart(cloud, kill=kill)
    old_member.c.loop_stop()
    port = cloud.mqtt_port
    after = [f"n{i}".encode() for i in range(5)]
    publish_all(port, after)
    b = member(port)
    b.subscribe(GROUP, qos=1)
    return port, after, b


def test_group_with_a_member_at_clean_stop_resumes_exactly(cloud_factory):
    """A clean stop stores the positions of groups that still have members: nothing the
    member acknowledged is delivered again, nothing published after the restart is lost."""
    cloud, a, done = cloud_with_a_busy_member(cloud_factory)
    # Its PUBACKs precede this publish on the wire and are handled in order.
    a.publish("jobs/other", b"barrier", qos=1)
    port, after, b = restart_publish_and_rejoin(cloud, a, kill=False)
    assert payloads(b, len(after)) == after
    b.expect_none(Mqtt(port, 5), TOPIC)


def test_group_with_a_member_at_kill_loses_nothing(cloud_factory):
    """SIGKILL while the group has a member: every message published after the restart
    is delivered; what the member had acknowledged since the last periodic save (at most
    about a second of progress) may come again (at least once), nothing else."""
    cloud, a, done = cloud_with_a_busy_member(cloud_factory)
    port, after, b = restart_publish_and_rejoin(cloud, a, kill=True)
    probe = Mqtt(port, 5)
    probe.publish(TOPIC, b"__barrier__", qos=1)
    got = []
    while not got or got[-1] != b"__barrier__":
        got += payloads(b, 1)
    got.pop()
    assert [p for p in got if p in after] == after, got
    redelivered = [p for p in got if p not in after]
    assert redelivered == done[len(done) - len(redelivered):], f"only a suffix of d0..d4 again: {got}"


def test_empty_group_forgotten_after_share_group_expiry(cloud_factory):
    from mqtt_fixtures import start_mqtt_cloud

    cloud = start_mqtt_cloud(cloud_factory, {"mqtt": {"share_group_expiry_secs": 1}})
    port = cloud.mqtt_port
    a = member(port)
    a.subscribe(GROUP, qos=1)
    a.close()
    left(port, a.client_id)
    publish_all(port, [b"expired-meanwhile"])
    from helpers import wait_for

    wait_for(lambda: "share group expired" in cloud.stderr_text(), 15, what="the expiry log line")
    # The expiry deleted the stored positions too: not even a restart brings them back.
    restart(cloud, kill=True)
    port = cloud.mqtt_port
    b = member(port)
    b.subscribe(GROUP, qos=1)
    b.expect_none(Mqtt(port, 5), TOPIC)


# ---- MQTT 5 DISCONNECT drain ---------------------------------------------------------


def _connect_v5(client_id: bytes) -> bytes:
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + struct.pack(">H", len(client_id)) + client_id
    return b"\x10" + varint(len(body)) + body


def _publish_qos2(topic: bytes, pkid: int, payload: bytes) -> bytes:
    body = struct.pack(">H", len(topic)) + topic + struct.pack(">H", pkid) + b"\x00" + payload
    return b"\x34" + varint(len(body)) + body


def _recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


def _connect(port: int, client_id: bytes) -> socket.socket:
    """A raw MQTT 5 connection, past its CONNACK."""
    s = raw(port)
    s.sendall(_connect_v5(client_id))
    s.settimeout(10)
    kind = _recv_exact(s, 1)[0]
    assert kind == 0x20, kind
    n, mult = 0, 1
    while True:
        b = _recv_exact(s, 1)[0]
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    body = _recv_exact(s, n)
    assert body[1] == 0, f"CONNACK reason {body[1]}"
    return s


def _read_packets(s: socket.socket) -> tuple[list[tuple[int, bytes]], str]:
    """Packets until the server closes; the close is 'eof' or 'reset'."""
    s.settimeout(10)
    data = b""
    end = "eof"
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            end = "reset"
            break
        if not chunk:
            break
        data += chunk
    packets = []
    while data:
        kind, i, n, mult = data[0], 1, 0, 1
        while True:
            n += (data[i] & 0x7F) * mult
            mult *= 128
            i += 1
            if not data[i - 1] & 0x80:
                break
        packets.append((kind, data[i:i + n]))
        data = data[i + n:]
    return packets, end


@pytest.mark.cloud_config({"mqtt": {"receive_maximum": 2}})
def test_refusing_disconnect_drains_input_so_the_client_reads_it(mqtt_cloud):
    """An MQTT 5 client exceeds the receive maximum (3 QoS 2 publishes, no PUBREL) and
    keeps sending (1 MiB more, as a client streaming publishes does). The cloud answers
    DISCONNECT 0x93 and drains what the client still sends: the client's writes all
    succeed and it reads the DISCONNECT followed by a clean end of stream. Without the
    drain, closing with unread input makes the kernel reset the connection: the client's
    send fails, or its read ends in a reset (paho's flow_control2 test failed so)."""
    s = _connect(mqtt_cloud.mqtt_port, b"drain-test")
    burst = b"".join(_publish_qos2(b"drain/t", i + 1, b"x" * 16) for i in range(3))
    # 4 MiB of PINGREQs the cloud will never answer: far more than the socket buffers
    # hold (the send buffer is fixed small), so the client is still writing when the
    # cloud decides to close.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    tail = b"\xc0\x00" * (2 << 20)
    s.sendall(burst + tail)  # raises ConnectionResetError/BrokenPipeError on a reset
    s.shutdown(socket.SHUT_WR)
    packets, end = _read_packets(s)
    s.close()
    disconnects = [body for kind, body in packets if kind == 0xE0]
    assert disconnects and disconnects[0][:1] == b"\x93", packets[-3:]
    assert end == "eof", "connection reset instead of a clean close"


def test_publishes_then_disconnect_are_all_appended_and_acked(mqtt_cloud):
    """An MQTT 5 client writes QoS 1 publishes and DISCONNECT in one go: each publish is
    appended (a subscriber gets all) and acknowledged before the cloud closes."""
    port = mqtt_cloud.mqtt_port
    sub = Mqtt(port, 5)
    sub.subscribe("burst/t", qos=1)
    s = _connect(port, b"burst-pub")
    n = 50
    pubs = b""
    for i in range(n):
        topic = b"burst/t"
        body = struct.pack(">H", len(topic)) + topic + struct.pack(">H", i + 1) + b"\x00" + b"b%d" % i
        pubs += b"\x32" + varint(len(body)) + body
    s.sendall(pubs + b"\xe0\x00")
    packets, end = _read_packets(s)
    s.close()
    acked = [struct.unpack(">H", body[:2])[0] for kind, body in packets if kind == 0x40]
    assert acked == list(range(1, n + 1)), packets
    assert end == "eof"
    assert [m.payload for m in sub.expect(n)] == [b"b%d" % i for i in range(n)]
