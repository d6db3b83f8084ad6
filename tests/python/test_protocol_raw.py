"""Protocol details checked on the wire: idempotent duplicates and sequence gaps are
answered as Kafka answers them, and producer state survives a kill -9."""

from __future__ import annotations

import kwire
from helpers import ck_create_topic, ck_read_all
from kwire import KConn

OUT_OF_ORDER_SEQUENCE_NUMBER = 45


def test_idempotent_duplicates_and_gaps(cloud, topic_name):
    ck_create_topic(cloud.bootstrap, topic_name)
    with KConn(cloud.host, cloud.port) as c:
        pid, epoch = kwire.init_producer_id(c)
        assert pid >= 0 and epoch >= 0
        b0 = kwire.encode_batch([b"a0", b"a1", b"a2"], pid, epoch, base_sequence=0)
        b1 = kwire.encode_batch([b"b0", b"b1"], pid, epoch, base_sequence=3)
        r0 = kwire.produce_v3(c, topic_name, 0, b0)
        assert (r0.error_code, r0.base_offset) == (0, 0)
        r1 = kwire.produce_v3(c, topic_name, 0, b1)
        assert (r1.error_code, r1.base_offset) == (0, 3)
        # A retry of either batch is a duplicate: Kafka answers success with the offset the
        # batch got the first time, and does not append it again.
        for batch, first in ((b1, r1), (b0, r0)):
            again = kwire.produce_v3(c, topic_name, 0, batch)
            assert (again.error_code, again.base_offset) == (0, first.base_offset)
        # A gap in the sequence is rejected.
        gap = kwire.encode_batch([b"gap"], pid, epoch, base_sequence=9)
        assert kwire.produce_v3(c, topic_name, 0, gap).error_code == OUT_OF_ORDER_SEQUENCE_NUMBER

    assert [r.value for r in ck_read_all(cloud.bootstrap, topic_name)] == [
        b"a0", b"a1", b"a2", b"b0", b"b1"]

    # Producer state is persisted: after a kill -9 the same retry is still a duplicate and
    # the next sequence number is still accepted.
    cloud.kill()
    cloud.start()
    with KConn(cloud.host, cloud.port) as c:
        again = kwire.produce_v3(c, topic_name, 0, b1)
        assert (again.error_code, again.base_offset) == (0, 3)
        b2 = kwire.encode_batch([b"c0"], pid, epoch, base_sequence=5)
        r2 = kwire.produce_v3(c, topic_name, 0, b2)
        assert (r2.error_code, r2.base_offset) == (0, 5)
    assert [r.value for r in ck_read_all(cloud.bootstrap, topic_name)] == [
        b"a0", b"a1", b"a2", b"b0", b"b1", b"c0"]


def test_fetch_mid_batch_returns_whole_batch(cloud, topic_name):
    """A fetch at an offset inside a stored batch returns that whole batch (clients skip
    the records before their position)."""
    ck_create_topic(cloud.bootstrap, topic_name)
    with KConn(cloud.host, cloud.port) as c:
        r = kwire.produce_v3(c, topic_name, 0, kwire.encode_batch([b"x0", b"x1", b"x2", b"x3"]))
        assert (r.error_code, r.base_offset) == (0, 0)
        fp = kwire.fetch_v4(c, topic_name, 0, 2)
        assert fp.error_code == 0 and fp.high_watermark == 4
        batches, _ = kwire.parse_batches(fp.records)
        assert batches and batches[0].base_offset == 0 and batches[0].record_count == 4
        assert batches[0].crc_ok()
        # Past the end: no error, no records, right high watermark.
        fp = kwire.fetch_v4(c, topic_name, 0, 4, max_wait_ms=10)
        assert (fp.error_code, fp.records, fp.high_watermark) == (0, b"", 4)
        # Beyond the end: OFFSET_OUT_OF_RANGE.
        fp = kwire.fetch_v4(c, topic_name, 0, 100, max_wait_ms=10)
        assert fp.error_code == 1


def test_fetch_honours_max_bytes_but_returns_at_least_one_batch(cloud, topic_name):
    ck_create_topic(cloud.bootstrap, topic_name)
    with KConn(cloud.host, cloud.port) as c:
        for i in range(20):  # 20 batches of ~1 kB
            r = kwire.produce_v3(c, topic_name, 0, kwire.encode_batch([bytes([65 + i]) * 1000]))
            assert r.error_code == 0
        one = len(kwire.fetch_v4(c, topic_name, 0, 0, max_bytes=100).records)
        batches, _ = kwire.parse_batches(kwire.fetch_v4(c, topic_name, 0, 0, max_bytes=100).records)
        # Smaller than one batch: still exactly the first whole batch (KIP-74).
        assert [b.base_offset for b in batches] == [0] and one == 12 + batches[0].batch_length
        fp = kwire.fetch_v4(c, topic_name, 0, 0, max_bytes=3 * one + 10)
        batches, partial = kwire.parse_batches(fp.records)
        assert 1 <= len(batches) <= 3 and len(fp.records) <= 3 * one + 10, (len(batches), len(fp.records))
        assert [b.base_offset for b in batches] == list(range(len(batches)))
        fp = kwire.fetch_v4(c, topic_name, 0, 0, max_bytes=1 << 20)
        assert len(kwire.parse_batches(fp.records)[0]) == 20
