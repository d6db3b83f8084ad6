"""A host-side writer of the cloud power-cut test, run as a process of its own:

    python3 power_cut_clients.py kafka BOOTSTRAP RUN
    python3 power_cut_clients.py mqtt PORT RUN
    python3 power_cut_clients.py retained PORT RUN
    python3 power_cut_clients.py qos2 PORT RUN
    python3 power_cut_clients.py hybrid BOOTSTRAP RUN

`kafka`: an idempotent acks=all confluent-kafka producer writes `RUN|SEQ|` to the topic
`pck`; `mqtt`: a paho MQTT 3.1.1 client publishes `RUN|SEQ|` with QoS 1 to `pcm/x`;
`retained`: the same, retained, to `pcr/last`; `qos2`: the same with QoS 2 to `pcq/x`;
`hybrid`: the `kafka` writer into `pch`, a topic it creates with `storage.mode=hybrid`.
SEQ counts from 0 until the process is killed. Each acknowledgement is printed as it
arrives: `k RUN SEQ` (delivery report without error), `m RUN SEQ` or `r RUN SEQ`
(PUBACK), `q RUN SEQ` (PUBCOMP), `h RUN SEQ` (hybrid delivery report). The test kills the process right
after it cuts the cloud's power; being a process of its own, nothing of it reconnects
into the next boot.
"""

from __future__ import annotations

import sys
import threading

from confluent_kafka import Producer
import paho.mqtt.client as mqtt

PAD = b"x" * 100
OUTSTANDING = 2000  # unacknowledged publishes per writer, at most


def say(line: str):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def kafka(bootstrap: str, run: int, topic: str = "pck", tag: str = "k"):
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5, "batch.num.messages": 200, "message.timeout.ms": 600000,
                  "queue.buffering.max.messages": OUTSTANDING})

    def report(err, msg):
        if err is None:
            _, seq, _ = msg.value().split(b"|", 2)
            say(f"{tag} {run} {int(seq)}")

    seq = 0
    while True:
        try:
            p.produce(topic, f"{run}|{seq}|".encode() + PAD, on_delivery=report)
            seq += 1
            p.poll(0)
        except BufferError:
            p.poll(0.1)


def mqtt_writer(port: int, run: int, topic: str, retain: bool, tag: str, qos: int = 1):
    pending = threading.Semaphore(OUTSTANDING)
    # mid -> SEQ of publishes not yet acknowledged. paho numbers a client's packets 1,
    # 2, ... 65535, 1, ... (this client sends nothing else that takes a mid), so the entry
    # is made before publish(): a PUBACK can then never find its mid missing.
    seq_of: dict[int, int] = {}
    lock = threading.Lock()

    def on_publish(client, userdata, mid, reason_code, properties):
        with lock:
            seq = seq_of.pop(mid)
        say(f"{tag} {run} {seq}")
        pending.release()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pc-{tag}-{run}",
                    protocol=mqtt.MQTTv311, clean_session=True)
    c.max_inflight_messages_set(100)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    seq = 0
    while True:
        pending.acquire()
        mid = seq % 65535 + 1
        with lock:
            seq_of[mid] = seq
        # Not under `lock`: paho holds its own lock while it calls on_publish.
        got = c.publish(topic, f"{run}|{seq}|".encode() + PAD, qos=qos, retain=retain).mid
        assert got == mid, f"paho gave mid {got}, expected {mid}"
        seq += 1


def main():
    kind, addr, run = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "kafka":
        kafka(addr, run)
    elif kind == "hybrid":
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": addr})
        fut = admin.create_topics([NewTopic("pch", num_partitions=1, replication_factor=1,
                                            config={"storage.mode": "hybrid"})])["pch"]
        try:
            fut.result(timeout=60)
        except Exception as e:  # created in an earlier boot
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
        kafka(addr, run, "pch", "h")
    elif kind == "mqtt":
        mqtt_writer(int(addr), run, "pcm/x", False, "m")
    elif kind == "retained":
        mqtt_writer(int(addr), run, "pcr/last", True, "r")
    else:
        mqtt_writer(int(addr), run, "pcq/x", False, "q", qos=2)


if __name__ == "__main__":
    main()
