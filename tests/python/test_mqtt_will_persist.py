"""MQTT view: delayed wills (MQTT 5 Will Delay Interval) are stored with the session, so
they survive a clean stop (SIGTERM), a kill (SIGKILL) and the restart after either: the
restarted cloud publishes a will when it is due (once, not before), unless its client
reconnected first (MQTT 5 3.1.3.2.2)."""

from __future__ import annotations

import re
import socket
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_fixtures import Mqtt, mqtt_cloud, props, read_until_closed, restart, start_mqtt_cloud  # noqa: F401

EXPIRY = 3600


def session_props():
    return props(PacketTypes.CONNECT, SessionExpiryInterval=EXPIRY)


def will_props(delay: int):
    return props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay, ContentType="text/plain",
                 UserProperty=[("site", "north")])


def dying_client(port: int, client_id: str, topic: str, payload: bytes, delay: int) -> Mqtt:
    return Mqtt(port, 5, client_id=client_id, clean=False, connect_props=session_props(),
                will=(topic, payload, 1, False, will_props(delay)))


def drop(c: Mqtt) -> float:
    """Ends the client's side of the connection without DISCONNECT (the will is due after
    its delay) and waits until the cloud closes its side, which it does once its leave is
    done: the session and the will stored. Returns the (monotonic) time of the drop."""
    c.c.loop_stop()
    s = c.c.socket()
    t0 = time.monotonic()
    s.shutdown(socket.SHUT_WR)
    read_until_closed(s, timeout=10)
    s.close()
    return t0


def stop_and_start(cloud, how: str):
    if how == "sigterm":
        cloud.stop(timeout=15)
        assert cloud.proc.returncode == 0, f"cloud exited {cloud.proc.returncode}\n{cloud.stderr_tail()}"
    return restart(cloud, kill=True)  # after a stop: just starts; else SIGKILL first


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_delayed_will_is_published_when_due_after_a_restart(cloud_factory, how):
    """The client's socket drops, the cloud stops (or is killed) before the will is due
    and starts again: a subscriber that connected after the restart gets the will, with
    the properties it had, once, and not before its due time."""
    delay = 5
    cloud = start_mqtt_cloud(cloud_factory)
    dying = dying_client(cloud.mqtt_port, f"will-{how}", "wp/status", b"offline", delay)
    dropped = drop(dying)
    stop_and_start(cloud, how)
    sub = Mqtt(cloud.mqtt_port, 5)
    sub.subscribe("wp/#", qos=1)
    subscribed = time.monotonic()
    assert subscribed < dropped + delay, (
        f"restart took {subscribed - dropped:.1f} s: not before the {delay} s will delay")
    m = sub.expect(1, timeout=delay + 10)[0]
    arrived = time.monotonic()
    assert (m.topic, m.payload) == ("wp/status", b"offline")
    # The due time is counted from the cloud's leave, which follows the drop. (0.1 s: the
    # wall clock the due time is stored in has ms steps.)
    assert arrived >= dropped + delay - 0.1, f"will published {dropped + delay - arrived:.2f} s early"
    assert m.properties.ContentType == "text/plain"
    assert m.properties.UserProperty == [("site", "north")]
    sub.expect_none(Mqtt(cloud.mqtt_port, 4), "wp/zz-probe")


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_reconnect_after_a_restart_cancels_a_stored_delayed_will(cloud_factory, how):
    """Two clients drop with delayed wills, the cloud stops (or is killed) and starts
    again, one client reconnects (same id, Clean Start 0) before its will is due. The
    other's will, due a second after the first's would have been, is the only will
    published: the probe published after it arrives next."""
    delay = 5
    cloud = start_mqtt_cloud(cloud_factory)
    back = dying_client(cloud.mqtt_port, "will-back", "wc/status", b"back-died", delay)
    gone = dying_client(cloud.mqtt_port, "will-gone", "wc/status", b"gone-died", delay + 1)
    dropped = drop(back)
    drop(gone)
    stop_and_start(cloud, how)
    sub = Mqtt(cloud.mqtt_port, 5)
    sub.subscribe("wc/#", qos=1)
    again = Mqtt(cloud.mqtt_port, 5, client_id="will-back", clean=False, connect_props=session_props())
    assert time.monotonic() < dropped + delay, "restart too slow: the will was due before the reconnect"
    assert again.connack[0].session_present
    m = sub.expect(1, timeout=delay + 10)[0]
    assert (m.topic, m.payload) == ("wc/status", b"gone-died")
    sub.expect_none(Mqtt(cloud.mqtt_port, 4), "wc/zz-probe")


def test_clean_start_reconnect_publishes_the_pending_will_at_once(mqtt_cloud):
    """A reconnect with Clean Start 1 ends the session, and a will is due when its
    session ends (MQTT 5 3.1.2.5): the 60 s delayed will is published at the reconnect,
    once."""
    sub = Mqtt(mqtt_cloud.mqtt_port, 5)
    sub.subscribe("wn/#", qos=1)
    drop(dying_client(mqtt_cloud.mqtt_port, "will-clean", "wn/status", b"ended", 60))
    again = Mqtt(mqtt_cloud.mqtt_port, 5, client_id="will-clean", clean=True, connect_props=session_props())
    assert not again.connack[0].session_present
    m = sub.expect(1)[0]
    assert (m.topic, m.payload) == ("wn/status", b"ended")
    sub.expect_none(Mqtt(mqtt_cloud.mqtt_port, 4), "wn/zz-probe")


@pytest.mark.parametrize("version", [4, 5])
def test_will_of_a_client_connected_at_a_kill_is_published_after_the_restart(cloud_factory, version):
    """A crash of the cloud loses its clients' connections without a DISCONNECT, so their
    wills are due (MQTT 3.1.2.5 / 3.1.3.2.2): each connection's will is stored before its
    CONNACK, and the restarted cloud publishes it. A client that disconnected normally
    before the kill has no will published. A subscriber with a persistent session, which
    subscribed before the kill, receives the will when it reconnects."""
    cloud = start_mqtt_cloud(cloud_factory)
    sub_id = f"will-sub-{version}"
    sub = Mqtt(cloud.mqtt_port, 5, client_id=sub_id, clean=False, connect_props=session_props())
    sub.subscribe("wk/#", qos=1)
    will = ("wk/status", b"lost-with-the-cloud", 1, False)
    polite = Mqtt(cloud.mqtt_port, version, will=("wk/status", b"never", 1, False))
    polite.close()
    dying = Mqtt(cloud.mqtt_port, version, will=will)
    # Its socket stays open until the kill; no reconnect afterwards.
    dying.c.loop_stop()
    sub.c.loop_stop()
    restart(cloud, kill=True)
    sub = Mqtt(cloud.mqtt_port, 5, client_id=sub_id, clean=False, connect_props=session_props())
    m = sub.expect(1, timeout=15)[0]
    assert (m.topic, m.payload) == ("wk/status", b"lost-with-the-cloud")
    sub.expect_none(Mqtt(cloud.mqtt_port, 4), "wk/zz-probe")
    dying.c.socket().close()


def wills_loaded_at_last_start(cloud) -> int:
    """The `wills` count of the restarted cloud's "mqtt view loaded" line: the wills it
    found in its store, logged before it serves anyone."""
    text = cloud.stderr_path.read_text(errors="replace")
    last = text.rsplit("==== test harness: start #", 1)[-1]
    line = next(line for line in last.splitlines() if "mqtt view loaded" in line)
    return int(re.search(r"wills=(\d+)", line).group(1))


def test_will_to_a_memory_topic_lives_in_the_process_only(cloud_factory):
    """A will addressed to a memory topic (`mqtt.topic_modes`) is not stored before the
    CONNACK: like the topic's records, it lives in the cloud process only. It is still
    published when its connection drops; a kill of the cloud takes it along, while the
    will to a persistent topic of a client connected at the same time is published after
    the restart."""
    cloud = start_mqtt_cloud(cloud_factory, {"mqtt": {"topic_modes": [
        {"filter": "mw/#", "mode": "memory"}]}})
    sub_id = "mem-will-sub"
    sub = Mqtt(cloud.mqtt_port, 5, client_id=sub_id, clean=False, connect_props=session_props())
    sub.subscribe("mw/#", qos=1)
    sub.subscribe("dw/#", qos=1)
    # Published on an abrupt disconnect while the cloud runs.
    early = Mqtt(cloud.mqtt_port, 4, will=("mw/early", b"dropped", 1, False))
    early.drop()
    m = sub.expect(1, timeout=15)[0]
    assert (m.topic, m.payload) == ("mw/early", b"dropped")
    # Connected at the kill: only the persistent topic's will survives it.
    in_memory = Mqtt(cloud.mqtt_port, 4, will=("mw/status", b"gone-with-the-process", 1, False))
    on_disk = Mqtt(cloud.mqtt_port, 4, will=("dw/status", b"lost-with-the-cloud", 1, False))
    for c in (in_memory, on_disk):
        c.c.loop_stop()  # sockets stay open until the kill; no reconnect afterwards
    sub.c.loop_stop()
    restart(cloud, kill=True)
    assert wills_loaded_at_last_start(cloud) == 1
    sub = Mqtt(cloud.mqtt_port, 5, client_id=sub_id, clean=False, connect_props=session_props())
    m = sub.expect(1, timeout=15)[0]
    assert (m.topic, m.payload) == ("dw/status", b"lost-with-the-cloud")
    sub.expect_none(Mqtt(cloud.mqtt_port, 4), "dw/zz-probe")
    for c in (in_memory, on_disk):
        c.c.socket().close()
