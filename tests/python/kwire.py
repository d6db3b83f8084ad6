"""A minimal raw Kafka wire client for the bad-input and storage-format tests.

Only what the tests need: framing, ApiVersions (v0 shape and v3 flexible), Fetch v4
(to look at stored RecordBatch headers: compression codec, CRC, base offsets), and a
RecordBatch v2 encoder + Produce v3 for the idempotence duplicate test.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

API_PRODUCE = 0
API_FETCH = 1
API_METADATA = 3
API_API_VERSIONS = 18
API_INIT_PRODUCER_ID = 22
API_SASL_HANDSHAKE = 17
API_SASL_AUTHENTICATE = 36

# ---- CRC32C (Castagnoli), table driven ---------------------------------------------------

_CRC32C_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    t = _CRC32C_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---- encoding ------------------------------------------------------------------------------


class W:
    def __init__(self):
        self.b = bytearray()

    def i8(self, v): self.b += struct.pack(">b", v); return self
    def i16(self, v): self.b += struct.pack(">h", v); return self
    def i32(self, v): self.b += struct.pack(">i", v); return self
    def u32(self, v): self.b += struct.pack(">I", v); return self
    def i64(self, v): self.b += struct.pack(">q", v); return self
    def raw(self, v): self.b += v; return self

    def string(self, s: str | None):
        if s is None:
            return self.i16(-1)
        e = s.encode()
        return self.i16(len(e)).raw(e)

    def uvarint(self, v: int):
        while True:
            if v < 0x80:
                self.b.append(v)
                return self
            self.b.append((v & 0x7F) | 0x80)
            v >>= 7

    def varint(self, v: int):
        return self.uvarint((v << 1) ^ (v >> 63))

    def compact_string(self, s: str | None):
        if s is None:
            return self.uvarint(0)
        e = s.encode()
        return self.uvarint(len(e) + 1).raw(e)

    def nbytes(self, v: bytes | None):
        if v is None:
            return self.i32(-1)
        return self.i32(len(v)).raw(v)

    def tags(self):
        return self.uvarint(0)

    def bytes(self) -> bytes:
        return bytes(self.b)


class R:
    def __init__(self, b: bytes):
        self.b = b
        self.p = 0

    def _take(self, n):
        if self.p + n > len(self.b):
            raise ValueError(f"short read: need {n} at {self.p}, have {len(self.b) - self.p}")
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

    def i8(self): return struct.unpack(">b", self._take(1))[0]
    def i16(self): return struct.unpack(">h", self._take(2))[0]
    def i32(self): return struct.unpack(">i", self._take(4))[0]
    def u32(self): return struct.unpack(">I", self._take(4))[0]
    def i64(self): return struct.unpack(">q", self._take(8))[0]

    def uvarint(self):
        shift = v = 0
        while True:
            byte = self._take(1)[0]
            v |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return v
            shift += 7

    def string(self):
        n = self.i16()
        return None if n < 0 else self._take(n).decode()

    def nbytes(self):
        n = self.i32()
        return None if n < 0 else self._take(n)

    def skip_tags(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self._take(self.uvarint())

    def remaining(self):
        return len(self.b) - self.p


# ---- connection ------------------------------------------------------------------------------


class KConn:
    def __init__(self, host: str, port: int, timeout: float = 10.0, ssl_context=None):
        """`ssl_context` (an ssl.SSLContext): speak TLS (handshake done here)."""
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname=host)
        self.corr = 0
        self.local_port = self.sock.getsockname()[1]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def frame(self, api_key: int, version: int, body: bytes, header_version: int,
              client_id: str | None = "pytest-raw") -> tuple[int, bytes]:
        self.corr += 1
        h = W().i16(api_key).i16(version).i32(self.corr)
        if header_version >= 1:
            h.string(client_id)
        if header_version >= 2:
            h.tags()
        payload = h.bytes() + body
        return self.corr, struct.pack(">i", len(payload)) + payload

    def request(self, api_key, version, body, header_version, timeout=10.0) -> tuple[int, bytes]:
        corr, data = self.frame(api_key, version, body, header_version)
        self.send_raw(data)
        return corr, self.recv_frame(timeout)

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out reading {n} bytes (got {len(buf)})")
            self.sock.settimeout(left)
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"connection closed by broker after {len(buf)}/{n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        (n,) = struct.unpack(">i", self._recv_exact(4, deadline))
        assert 0 <= n < 256 << 20, f"implausible response length {n}"
        return self._recv_exact(n, deadline)

    def closed_by_peer_within(self, timeout: float) -> tuple[bool, bytes]:
        """Waits for EOF/RST from the broker. Returns (closed, bytes received meanwhile)."""
        deadline = time.monotonic() + timeout
        got = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, bytes(got)
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False, bytes(got)
            except (ConnectionResetError, BrokenPipeError):
                return True, bytes(got)
            except OSError as e:  # a TLS alert or an unclean TLS close
                if "EOF" in str(e) or "alert" in str(e).lower():
                    return True, bytes(got)
                raise
            if not chunk:
                return True, bytes(got)
            got += chunk


# ---- ApiVersions -----------------------------------------------------------------------------


@dataclass
class ApiVersionsResp:
    correlation_id: int
    error_code: int
    apis: dict  # api_key -> (min, max)
    throttle_time_ms: int | None


def api_versions_body(version: int) -> bytes:
    if version >= 3:
        return W().compact_string("pytest-raw").compact_string("0.1").tags().bytes()
    return b""


def parse_api_versions_v0(frame: bytes) -> ApiVersionsResp:
    r = R(frame)
    corr = r.i32()
    err = r.i16()
    n = r.i32()
    apis = {}
    for _ in range(max(n, 0)):
        k, lo, hi = r.i16(), r.i16(), r.i16()
        apis[k] = (lo, hi)
    throttle = r.i32() if r.remaining() >= 4 else None
    return ApiVersionsResp(corr, err, apis, throttle)


def parse_api_versions_v3(frame: bytes) -> ApiVersionsResp:
    r = R(frame)
    corr = r.i32()  # response header v0 for ApiVersions, always
    err = r.i16()
    n = r.uvarint() - 1
    apis = {}
    for _ in range(max(n, 0)):
        k, lo, hi = r.i16(), r.i16(), r.i16()
        r.skip_tags()
        apis[k] = (lo, hi)
    throttle = r.i32()
    r.skip_tags()
    assert r.remaining() == 0, f"{r.remaining()} trailing bytes in ApiVersions v3 response"
    return ApiVersionsResp(corr, err, apis, throttle)


def api_versions(conn: KConn, version: int = 3) -> ApiVersionsResp:
    hv = 2 if version >= 3 else 1
    corr, frame = conn.request(API_API_VERSIONS, version, api_versions_body(version), hv)
    resp = parse_api_versions_v3(frame) if version >= 3 else parse_api_versions_v0(frame)
    assert resp.correlation_id == corr, f"correlation id {resp.correlation_id} != {corr}"
    return resp


# ---- SASL ----------------------------------------------------------------------------------


def sasl_handshake(conn: KConn, mechanism: str = "PLAIN", version: int = 1) -> tuple[int, list[str]]:
    """SaslHandshake v0/v1 -> (error_code, mechanisms)."""
    corr, frame = conn.request(API_SASL_HANDSHAKE, version, W().string(mechanism).bytes(), 1)
    r = R(frame)
    assert r.i32() == corr
    err = r.i16()
    mechs = [r.string() for _ in range(r.i32())]
    return err, mechs


def sasl_authenticate(conn: KConn, token: bytes) -> tuple[int, str | None]:
    """SaslAuthenticate v1 -> (error_code, error_message)."""
    corr, frame = conn.request(API_SASL_AUTHENTICATE, 1, W().nbytes(token).bytes(), 1)
    r = R(frame)
    assert r.i32() == corr
    err = r.i16()
    msg = r.string()
    r.nbytes()
    r.i64()
    return err, msg


def plain_token(user: str, password: str) -> bytes:
    return b"\0" + user.encode() + b"\0" + password.encode()


# ---- RecordBatch -------------------------------------------------------------------------------


@dataclass
class Batch:
    base_offset: int
    batch_length: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int
    raw: bytes

    @property
    def codec(self) -> int:
        return self.attributes & 0x07

    def crc_ok(self) -> bool:
        # CRC32C covers attributes .. end of batch (byte 21 onward).
        return crc32c(self.raw[21:]) == self.crc


def parse_batches(records: bytes) -> tuple[list[Batch], int]:
    """Returns (complete batches, trailing partial bytes)."""
    out = []
    p = 0
    while len(records) - p >= 12:
        base_offset, length = struct.unpack(">qi", records[p:p + 12])
        end = p + 12 + length
        if end > len(records):
            break
        raw = records[p:end]
        r = R(raw[12:])
        _leader_epoch = r.i32()
        magic = r.i8()
        crc = r.u32()
        attrs = r.i16()
        lod = r.i32()
        bts = r.i64()
        mts = r.i64()
        pid = r.i64()
        pep = r.i16()
        bseq = r.i32()
        cnt = r.i32()
        out.append(Batch(base_offset, length, magic, crc, attrs, lod, bts, mts, pid, pep, bseq, cnt, raw))
        p = end
    return out, len(records) - p


def encode_batch(values: list[bytes], producer_id: int = -1, producer_epoch: int = -1,
                 base_sequence: int = -1, timestamp_ms: int | None = None) -> bytes:
    """An uncompressed RecordBatch v2 (base offset 0) with keyless records."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    recs = bytearray()
    for i, v in enumerate(values):
        body = W().i8(0).varint(0).varint(i).varint(-1).varint(len(v)).raw(v).varint(0).bytes()
        recs += W().varint(len(body)).bytes() + body
    after_crc = (W().i16(0).i32(len(values) - 1).i64(ts).i64(ts).i64(producer_id)
                 .i16(producer_epoch).i32(base_sequence).i32(len(values)).raw(bytes(recs)).bytes())
    crc = crc32c(after_crc)
    tail = W().i32(-1).i8(2).u32(crc).raw(after_crc).bytes()  # leader epoch, magic, crc
    return W().i64(0).i32(len(tail)).raw(tail).bytes()


# ---- Fetch v4 ---------------------------------------------------------------------------------


@dataclass
class FetchPartition:
    error_code: int
    high_watermark: int
    records: bytes


def fetch_v4(conn: KConn, topic: str, partition: int, offset: int, max_wait_ms: int = 100,
             max_bytes: int = 8 << 20) -> FetchPartition:
    body = (W().i32(-1).i32(max_wait_ms).i32(1).i32(max_bytes).i8(0)
            .i32(1).string(topic).i32(1).i32(partition).i64(offset).i32(max_bytes).bytes())
    corr, frame = conn.request(API_FETCH, 4, body, 1, timeout=max_wait_ms / 1000 + 10)
    r = R(frame)
    assert r.i32() == corr
    r.i32()  # throttle
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            p = r.i32()
            err = r.i16()
            hw = r.i64()
            r.i64()  # last stable offset
            n_aborted = r.i32()
            for _ in range(max(n_aborted, 0)):
                r.i64()
                r.i64()
            recs = r.nbytes() or b""
            if name == topic and p == partition:
                return FetchPartition(err, hw, recs)
    raise AssertionError(f"fetch response has no {topic}/{partition}")


def fetch_all_batches(host: str, port: int, topic: str, partition: int = 0,
                      timeout: float = 20.0) -> list[Batch]:
    """All stored batches of a partition from offset 0 up to the high watermark."""
    out: list[Batch] = []
    offset = 0
    deadline = time.monotonic() + timeout
    with KConn(host, port) as c:
        while True:
            assert time.monotonic() < deadline, f"raw fetch of {topic}/{partition} did not finish"
            fp = fetch_v4(c, topic, partition, offset)
            assert fp.error_code == 0, f"fetch {topic}/{partition}@{offset}: error {fp.error_code}"
            batches, _ = parse_batches(fp.records)
            if not batches:
                if offset >= fp.high_watermark:
                    return out
                raise AssertionError(f"fetch at {offset} < hw {fp.high_watermark} returned no batch")
            for b in batches:
                if b.base_offset + b.last_offset_delta >= offset:
                    if not out or b.base_offset > out[-1].base_offset:
                        out.append(b)
            offset = batches[-1].base_offset + batches[-1].last_offset_delta + 1
            if offset >= fp.high_watermark:
                return out


# ---- InitProducerId v0 + Produce v3 (idempotent duplicate test) -----------------------------


def init_producer_id(conn: KConn) -> tuple[int, int]:
    body = W().string(None).i32(60000).bytes()
    corr, frame = conn.request(API_INIT_PRODUCER_ID, 0, body, 1)
    r = R(frame)
    assert r.i32() == corr
    r.i32()  # throttle
    err = r.i16()
    assert err == 0, f"InitProducerId error {err}"
    return r.i64(), r.i16()


@dataclass
class ProducePartition:
    error_code: int
    base_offset: int


def produce_v3(conn: KConn, topic: str, partition: int, batch: bytes, acks: int = -1) -> ProducePartition:
    body = (W().string(None).i16(acks).i32(30000).i32(1).string(topic)
            .i32(1).i32(partition).nbytes(batch).bytes())
    corr, frame = conn.request(API_PRODUCE, 3, body, 1)
    r = R(frame)
    assert r.i32() == corr
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            p = r.i32()
            err = r.i16()
            base = r.i64()
            r.i64()  # log append time
            if name == topic and p == partition:
                return ProducePartition(err, base)
    raise AssertionError("produce response without our partition")
