//! A lean RecordBatch v2 writer and reader (bytes only, no I/O).
//!
//! `kafka-protocol`'s record codec builds an `IndexMap` of headers and several owned
//! buffers per record; on the MQTT paths of the cloud that was about a third of the
//! instructions per message (measured with callgrind). This module writes and reads the
//! v2 layout directly:
//!
//! ```text
//! batch:  baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 (2) |
//!         crc u32 (CRC-32C of attributes..end) | attributes i16 | lastOffsetDelta i32 |
//!         baseTimestamp i64 | maxTimestamp i64 | producerId i64 | producerEpoch i16 |
//!         baseSequence i32 | recordCount i32 | records (compressed as one block)
//! record: length varint | attributes i8 | timestampDelta varlong | offsetDelta varint |
//!         keyLength varint | key | valueLength varint | value |
//!         headerCount varint | (keyLength varint | key | valueLength varint | value)*
//! ```
//!
//! Varints are zig-zag encoded; a length of -1 is null. Compression (attributes bits 0-2):
//! the writer does none, gzip, lz4 and zstd (the edge's uplink codecs); the reader none
//! and zstd, leaving gzip, snappy and lz4 to `kafka-protocol` ([`Error::Unsupported`]).

use bytes::{Buf, Bytes};

use super::batch::{BatchRecord, ProducerState};

/// Size of the batch header, up to and including the record count.
pub const HEADER_LEN: usize = 61;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
/// Attribute bits 0-2: compression codec.
const CODEC_MASK: i16 = 0x07;
const CODEC_NONE: i16 = 0;
const CODEC_GZIP: i16 = 1;
const CODEC_LZ4: i16 = 3;
const CODEC_ZSTD: i16 = 4;
/// gzip level: zlib's fastest. Kafka's default (6) made the edge's encoder thread the
/// drain's bottleneck: `edge-bench --compression gzip`, 300 MB of hex payloads, 29 MB/s
/// and 10.7 s of encoder CPU at 6 (ratio 1.68), 97 MB/s and 2.65 s at 1 (ratio 1.78).
const GZIP_LEVEL: u32 = 1;
const CONTROL: i16 = 0x20;
/// Default zstd level. Level 1 compresses about twice as fast as kafka-protocol's fixed
/// level 3 for a few percent larger output, which keeps an edge's drain from being
/// CPU-bound.
pub const ZSTD_LEVEL: i32 = 1;
/// zstd levels a [`Compressor`] accepts (the zstd tool's range without `--ultra`).
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;
/// Largest decompressed record block accepted (bytes).
pub const MAX_DECOMPRESSED: usize = 64 << 20;

/// Compression of a written batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Uncompressed.
    None,
    /// gzip at its fastest level: every Kafka client reads it, KafkaJS without an
    /// extra codec.
    Gzip,
    /// LZ4 frames of independent 64 KiB blocks, at LZ4's fast level (librdkafka's
    /// default), as Kafka's own producer frames them.
    Lz4,
    /// zstd, at the [`Compressor`]'s level ([`ZSTD_LEVEL`] by default).
    Zstd,
}

/// Why a batch could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes end before the structure does, or a length is invalid.
    #[error("malformed record batch: {0}")]
    Malformed(&'static str),
    /// A codec this reader leaves to `kafka-protocol` (gzip, snappy, lz4) or an old magic.
    #[error("record batch codec or magic not handled here: {0}")]
    Unsupported(&'static str),
    /// zstd failed.
    #[error("zstd: {0}")]
    Zstd(String),
    /// gzip or lz4 failed.
    #[error("{0}")]
    Compress(String),
}

fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

fn bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        Some(b) => varint_len(b.len() as i64) + b.len(),
        None => 1,
    }
}

/// One record header: name and value (`None` is a null value).
pub type Header<'a> = (&'a [u8], Option<&'a [u8]>);

/// Writes `records` as one v2 RecordBatch with offset deltas `0..n`.
///
/// An idempotent producer (`producer_id >= 0`) gets `baseSequence = base_sequence`;
/// otherwise the batch carries Kafka's "no sequence" (-1).
pub fn write(
    records: &[BatchRecord],
    producer: ProducerState,
    base_sequence: i32,
    codec: Codec,
) -> Result<Bytes, Error> {
    let base_ts = records.first().map(|r| r.timestamp_ms).unwrap_or(0);
    let mut w = Writer::with_capacity(records_capacity(records, base_ts));
    for r in records {
        w.push(
            r.timestamp_ms,
            r.key.as_deref(),
            r.value.as_deref(),
            r.headers.iter().map(|(k, v)| (k.as_bytes(), v.as_deref())),
        );
    }
    w.finish(producer, base_sequence, codec, &mut Compressor::default())
}

/// A zstd compression context kept across batches: creating one per batch allocates and
/// initialises its tables every time (measured with callgrind on the edge's drain). It
/// also keeps the last batch's compressed output: each batch reserving `compress_bound`
/// (more than its input) in its own buffer mapped a fresh region per batch (glibc maps
/// blocks of 128 KiB and more) that was unmapped when the broker acknowledged it, and
/// every unmap in a multi-threaded process interrupts the other cores (perf on the
/// edge's drain: TLB-shootdown IPIs and page clearing 3-4% of its CPU). Now a batch gets
/// an exact-size buffer.
pub struct Compressor {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    scratch: Vec<u8>,
    level: i32,
}

impl Default for Compressor {
    fn default() -> Self {
        Self::with_level(ZSTD_LEVEL)
    }
}

impl Compressor {
    /// A compressor at zstd `level` (clamped to [`ZSTD_LEVELS`]).
    pub fn with_level(level: i32) -> Self {
        Compressor {
            zstd: None,
            scratch: Vec::new(),
            level: level.clamp(*ZSTD_LEVELS.start(), *ZSTD_LEVELS.end()),
        }
    }

    /// Appends `src` compressed with `codec` (gzip or lz4) to `out` (which has room for
    /// the batch header only: the output grows it; gzip and lz4 are for clients and
    /// brokers without zstd, so no context is kept for them).
    fn compress_other(codec: Codec, src: &[u8], out: Vec<u8>) -> Result<Vec<u8>, Error> {
        use std::io::Write;
        let failed = |what: &str, e: std::io::Error| Error::Compress(format!("{what}: {e}"));
        match codec {
            Codec::Gzip => {
                let level = flate2::Compression::new(GZIP_LEVEL);
                let mut e = flate2::write::GzEncoder::new(out, level);
                e.write_all(src).map_err(|e| failed("gzip", e))?;
                e.finish().map_err(|e| failed("gzip", e))
            }
            Codec::Lz4 => {
                let mut e = lz4::EncoderBuilder::new()
                    .block_size(lz4::BlockSize::Max64KB)
                    .block_mode(lz4::BlockMode::Independent)
                    .checksum(lz4::ContentChecksum::NoChecksum)
                    .level(0)
                    .build(out)
                    .map_err(|e| failed("lz4", e))?;
                e.write_all(src).map_err(|e| failed("lz4", e))?;
                let (out, done) = e.finish();
                done.map_err(|e| failed("lz4", e))?;
                Ok(out)
            }
            Codec::None | Codec::Zstd => Ok(out),
        }
    }

    /// Appends `src` compressed to `out`, which grows to exactly the bytes it holds.
    fn compress_into(&mut self, src: &[u8], mut out: Vec<u8>) -> Result<Vec<u8>, Error> {
        let zstd = match &mut self.zstd {
            Some(z) => z,
            None => self.zstd.insert(
                zstd::bulk::Compressor::new(self.level).map_err(|e| Error::Zstd(e.to_string()))?,
            ),
        };
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(src.len()));
        zstd.compress_to_buffer(src, &mut self.scratch)
            .map_err(|e| Error::Zstd(e.to_string()))?;
        out.reserve_exact(self.scratch.len());
        out.extend_from_slice(&self.scratch);
        Ok(out)
    }
}

/// Builds one v2 RecordBatch record by record, straight into its record block: no
/// per-record allocation. [`Writer::finish`] adds the header (and compresses).
#[derive(Debug, Default)]
pub struct Writer {
    body: Vec<u8>,
    count: i32,
    /// Offset delta of the last record pushed.
    last_delta: i32,
    base_ts: i64,
    max_ts: i64,
}

/// The fields a rewritten batch keeps from the batch it replaces
/// ([`Writer::finish_rewrite`]): log compaction drops records but keeps offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    /// Base offset of the original batch.
    pub base_offset: i64,
    /// Its last offset delta: the batch still spans the same offsets.
    pub last_offset_delta: i32,
    /// Its attributes (codec bits are replaced by the codec written).
    pub attributes: i16,
    /// Its producer id and epoch.
    pub producer: ProducerState,
    /// Its base sequence (records keep their deltas, so their sequences hold).
    pub base_sequence: i32,
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => out.push(1),
    }
}

impl Writer {
    /// An empty batch with room for about `capacity` bytes of records.
    pub fn with_capacity(capacity: usize) -> Writer {
        Writer {
            body: Vec::with_capacity(capacity),
            ..Writer::default()
        }
    }

    /// Bytes the record block can hold without growing.
    pub fn capacity(&self) -> usize {
        self.body.capacity()
    }

    /// Records written so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record was written.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends one record (offset delta = its position). `headers` is walked twice
    /// (length, then bytes).
    pub fn push<'h, I>(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: I,
    ) where
        I: IntoIterator<Item = Header<'h>>,
        I::IntoIter: Clone,
    {
        self.push_at(self.count, timestamp_ms, key, value, headers);
    }

    /// Appends one record at `offset_delta`, which must be above the previous record's
    /// (compaction keeps each retained record's offset).
    pub fn push_at<'h, I>(
        &mut self,
        offset_delta: i32,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: I,
    ) where
        I: IntoIterator<Item = Header<'h>>,
        I::IntoIter: Clone,
    {
        debug_assert!(self.count == 0 || offset_delta > self.last_delta);
        if self.count == 0 {
            self.base_ts = timestamp_ms;
            self.max_ts = timestamp_ms;
        }
        self.max_ts = self.max_ts.max(timestamp_ms);
        let headers = headers.into_iter();
        let ts_delta = timestamp_ms.wrapping_sub(self.base_ts);
        let i = i64::from(offset_delta);
        let mut n_headers = 0;
        let mut len = 1 + varint_len(ts_delta) + varint_len(i) + bytes_len(key) + bytes_len(value);
        for (k, v) in headers.clone() {
            len += bytes_len(Some(k)) + bytes_len(v);
            n_headers += 1;
        }
        len += varint_len(n_headers);
        let body = &mut self.body;
        body.reserve(len + 5);
        put_varint(body, len as i64);
        body.push(0);
        put_varint(body, ts_delta);
        put_varint(body, i);
        put_bytes(body, key);
        put_bytes(body, value);
        put_varint(body, n_headers);
        for (k, v) in headers {
            put_bytes(body, Some(k));
            put_bytes(body, v);
        }
        self.count += 1;
        self.last_delta = offset_delta;
    }

    /// The finished batch. An idempotent producer (`producer_id >= 0`) gets
    /// `baseSequence = base_sequence`; otherwise the batch carries Kafka's "no sequence"
    /// (-1). `zstd` is used (and kept for the next batch) when `codec` is zstd.
    pub fn finish(
        &self,
        producer: ProducerState,
        base_sequence: i32,
        codec: Codec,
        zstd: &mut Compressor,
    ) -> Result<Bytes, Error> {
        let seq = if producer.producer_id >= 0 {
            base_sequence
        } else {
            -1
        };
        let span = Rewrite {
            base_offset: 0,
            last_offset_delta: self.last_delta.max(0),
            attributes: 0,
            producer,
            base_sequence: seq,
        };
        self.finish_span(span, codec, zstd)
    }

    /// The batch that replaces `old` after records were dropped from it: same base offset,
    /// offset span, producer fields and timestamp type, the records pushed (at their
    /// deltas) in `codec`. Timestamps are the records' own (the maximum may fall).
    pub fn finish_rewrite(
        &self,
        old: Rewrite,
        codec: Codec,
        zstd: &mut Compressor,
    ) -> Result<Bytes, Error> {
        debug_assert!(self.last_delta <= old.last_offset_delta);
        self.finish_span(old, codec, zstd)
    }

    fn finish_span(
        &self,
        span: Rewrite,
        codec: Codec,
        zstd: &mut Compressor,
    ) -> Result<Bytes, Error> {
        let count = self.count;
        let attributes = (span.attributes & !CODEC_MASK & !CONTROL)
            | match codec {
                Codec::None => CODEC_NONE,
                Codec::Gzip => CODEC_GZIP,
                Codec::Lz4 => CODEC_LZ4,
                Codec::Zstd => CODEC_ZSTD,
            };
        let mut out = Vec::with_capacity(match codec {
            Codec::None => HEADER_LEN + self.body.len(),
            Codec::Gzip | Codec::Lz4 | Codec::Zstd => HEADER_LEN,
        });
        out.extend_from_slice(&span.base_offset.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes()); // batch length, set below
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.push(2);
        out.extend_from_slice(&0u32.to_be_bytes()); // crc, set below
        out.extend_from_slice(&attributes.to_be_bytes());
        out.extend_from_slice(&span.last_offset_delta.to_be_bytes());
        out.extend_from_slice(&self.base_ts.to_be_bytes());
        out.extend_from_slice(&self.max_ts.to_be_bytes());
        out.extend_from_slice(&span.producer.producer_id.to_be_bytes());
        out.extend_from_slice(&span.producer.producer_epoch.to_be_bytes());
        out.extend_from_slice(&span.base_sequence.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        let mut out = match codec {
            Codec::None => {
                out.extend_from_slice(&self.body);
                out
            }
            // Exact size: the batch is kept until acknowledged (bounds the edge's RSS).
            Codec::Zstd => zstd.compress_into(&self.body, out)?,
            Codec::Gzip | Codec::Lz4 => {
                let mut out = Compressor::compress_other(codec, &self.body, out)?;
                out.shrink_to_fit();
                out
            }
        };
        let batch_len =
            i32::try_from(out.len() - 12).map_err(|_| Error::Malformed("batch too large"))?;
        out[8..12].copy_from_slice(&batch_len.to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTRIBUTES_AT..]);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(Bytes::from(out))
    }

    /// Empties the writer for the next batch, keeping its memory.
    pub fn clear(&mut self) {
        self.body.clear();
        self.count = 0;
        self.last_delta = 0;
    }
}

fn records_capacity(records: &[BatchRecord], base_ts: i64) -> usize {
    records
        .iter()
        .map(|r| {
            let h: usize = r
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()) + 10)
                .sum();
            r.key.as_ref().map_or(0, |k| k.len())
                + r.value.as_ref().map_or(0, |v| v.len())
                + h
                + 30
                + varint_len(r.timestamp_ms.wrapping_sub(base_ts))
        })
        .sum()
}

/// One record read from a batch; key, value and headers share the batch's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// Absolute offset (base offset + delta).
    pub offset: i64,
    /// Absolute timestamp (base timestamp + delta), ms.
    pub timestamp: i64,
    /// Record key.
    pub key: Option<Bytes>,
    /// Record value.
    pub value: Option<Bytes>,
    /// Headers in order (names are not checked for UTF-8).
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// The records of one batch, decoded lazily.
pub struct Records {
    body: Bytes,
    base_offset: i64,
    base_timestamp: i64,
    left: u32,
    /// Whether the batch is a control batch (transaction markers).
    pub control: bool,
}

/// Reads one whole v2 batch (`batch` is exactly one batch). The CRC is not checked:
/// stored batches were checked when they were produced.
pub fn read(batch: &Bytes) -> Result<Records, Error> {
    if batch.len() < HEADER_LEN {
        return Err(Error::Malformed("batch shorter than its header"));
    }
    if batch[16] != 2 {
        return Err(Error::Unsupported("magic below 2"));
    }
    let mut h = &batch[..HEADER_LEN];
    let base_offset = h.get_i64();
    let len = h.get_i32();
    if len < (HEADER_LEN - 12) as i32 || 12 + len as usize > batch.len() {
        return Err(Error::Malformed("batch length"));
    }
    h.advance(4 + 1 + 4);
    let attributes = h.get_i16();
    h.advance(4);
    let base_timestamp = h.get_i64();
    h.advance(8 + 8 + 2 + 4);
    let count = h.get_i32();
    if count < 0 {
        return Err(Error::Malformed("negative record count"));
    }
    let raw = batch.slice(HEADER_LEN..12 + len as usize);
    let body = match attributes & CODEC_MASK {
        CODEC_NONE => raw,
        CODEC_ZSTD => Bytes::from(decompress_zstd(&raw)?),
        _ => return Err(Error::Unsupported("gzip, snappy or lz4")),
    };
    Ok(Records {
        body,
        base_offset,
        base_timestamp,
        left: count as u32,
        control: attributes & CONTROL != 0,
    })
}

/// The record block of a zstd batch. A frame that states its size (as ours and
/// librdkafka's do) is decompressed in one call into a buffer of exactly that size;
/// anything else (no size, several frames) streams into a growing buffer.
fn decompress_zstd(raw: &[u8]) -> Result<Vec<u8>, Error> {
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(raw) {
        if size > MAX_DECOMPRESSED as u64 {
            return Err(Error::Malformed("decompressed records too large"));
        }
        if let Some(out) = decompress_sized(raw, size as usize) {
            return Ok(out);
        }
    }
    let mut out = Vec::new();
    let mut dec = zstd::stream::read::Decoder::new(raw).map_err(|e| Error::Zstd(e.to_string()))?;
    let n = std::io::copy(
        &mut std::io::Read::take(&mut dec, MAX_DECOMPRESSED as u64 + 1),
        &mut out,
    )
    .map_err(|e| Error::Zstd(e.to_string()))?;
    if n as usize > MAX_DECOMPRESSED {
        return Err(Error::Malformed("decompressed records too large"));
    }
    Ok(out)
}

/// One frame of a stated size, through this thread's decompression context: creating a
/// context per batch (as `zstd::bulk::decompress` does) cost the cloud about 5% of a
/// Produce worker's CPU in a drain of edge batches.
fn decompress_sized(raw: &[u8], size: usize) -> Option<Vec<u8>> {
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DCTX.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        let out = slot.as_mut()?.decompress(raw, size).ok()?;
        (out.len() == size).then_some(out)
    })
}

fn get_varint(b: &mut Bytes) -> Result<i64, Error> {
    let mut z: u64 = 0;
    for shift in (0..70).step_by(7) {
        if !b.has_remaining() {
            return Err(Error::Malformed("varint truncated"));
        }
        let byte = b.get_u8();
        z |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    Err(Error::Malformed("varint too long"))
}

fn get_bytes(b: &mut Bytes) -> Result<Option<Bytes>, Error> {
    let n = get_varint(b)?;
    if n < 0 {
        return Ok(None);
    }
    let n = n as usize;
    if n > b.len() {
        return Err(Error::Malformed("field longer than record"));
    }
    Ok(Some(b.split_to(n)))
}

impl Records {
    fn next_record(&mut self) -> Result<RecordView, Error> {
        let len = get_varint(&mut self.body)?;
        if len < 0 || len as usize > self.body.len() {
            return Err(Error::Malformed("record length"));
        }
        let mut r = self.body.split_to(len as usize);
        if !r.has_remaining() {
            return Err(Error::Malformed("empty record"));
        }
        r.advance(1);
        let ts_delta = get_varint(&mut r)?;
        let offset_delta = get_varint(&mut r)?;
        let key = get_bytes(&mut r)?;
        let value = get_bytes(&mut r)?;
        let n = get_varint(&mut r)?;
        if n < 0 || n as usize > r.len() {
            return Err(Error::Malformed("header count"));
        }
        let mut headers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = get_bytes(&mut r)?.ok_or(Error::Malformed("null header name"))?;
            headers.push((k, get_bytes(&mut r)?));
        }
        Ok(RecordView {
            offset: self.base_offset.wrapping_add(offset_delta),
            timestamp: self.base_timestamp.wrapping_add(ts_delta),
            key,
            value,
            headers,
        })
    }
}

impl Records {
    /// The record block not read yet (all of it before the first `next`), decompressed.
    pub fn rest(&self) -> &[u8] {
        &self.body
    }
}

impl Iterator for Records {
    type Item = Result<RecordView, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = self.next_record();
        if r.is_err() {
            self.left = 0;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };
    use proptest::prelude::*;

    fn rec(i: i64, key: Option<&[u8]>, value: Option<&[u8]>, headers: usize) -> BatchRecord {
        BatchRecord {
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: (0..headers)
                .map(|h| {
                    let v = (h % 2 == 0).then(|| Bytes::from(format!("v{h}-{i}")));
                    (format!("h{h}"), v)
                })
                .collect(),
            timestamp_ms: 1_700_000_000_000 + i * 7 - (i % 3) * 11,
        }
    }

    /// What kafka-protocol's decoder reads from our bytes equals the input.
    fn check_with_reference(recs: &[BatchRecord], p: ProducerState, seq: i32, codec: Codec) {
        let mut b = write(recs, p, seq, codec).unwrap();
        let whole = b.clone();
        let set = RecordBatchDecoder::decode(&mut b).unwrap();
        assert!(b.is_empty(), "exactly one batch");
        assert_eq!(set.records.len(), recs.len());
        for (i, (got, want)) in set.records.iter().zip(recs).enumerate() {
            assert_eq!(got.offset, i as i64);
            assert_eq!(got.timestamp, want.timestamp_ms);
            assert_eq!(got.key, want.key);
            assert_eq!(got.value, want.value);
            assert_eq!(got.producer_id, p.producer_id);
            if p.producer_id >= 0 {
                assert_eq!(got.sequence, seq + i as i32);
            }
            let h: Vec<(String, Option<Bytes>)> = got
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            assert_eq!(h, want.headers);
        }
        if matches!(codec, Codec::Gzip | Codec::Lz4) {
            // Written for the uplink; the cloud reads them with kafka-protocol.
            assert!(matches!(read(&whole), Err(Error::Unsupported(_))));
            return;
        }
        // And our reader agrees.
        let ours: Vec<RecordView> = read(&whole).unwrap().map(Result::unwrap).collect();
        assert_eq!(ours.len(), recs.len());
        for (i, (got, want)) in ours.iter().zip(recs).enumerate() {
            assert_eq!(got.offset, i as i64);
            assert_eq!(got.timestamp, want.timestamp_ms);
            assert_eq!(got.key, want.key);
            assert_eq!(got.value, want.value);
            assert_eq!(got.headers.len(), want.headers.len());
            for ((gk, gv), (wk, wv)) in got.headers.iter().zip(&want.headers) {
                assert_eq!(&gk[..], wk.as_bytes());
                assert_eq!(gv, wv);
            }
        }
    }

    #[test]
    fn matches_kafka_protocol_every_codec() {
        let recs: Vec<BatchRecord> = (0..50)
            .map(|i| {
                rec(
                    i,
                    (i % 4 != 0).then_some(b"key"),
                    Some(&[b'x'; 300]),
                    (i % 5) as usize,
                )
            })
            .collect();
        for codec in [Codec::None, Codec::Gzip, Codec::Lz4, Codec::Zstd] {
            check_with_reference(&recs, ProducerState::NONE, 0, codec);
            let p = ProducerState {
                producer_id: 9,
                producer_epoch: 3,
            };
            check_with_reference(&recs, p, 1000, codec);
        }
        check_with_reference(
            &[rec(0, None, None, 0)],
            ProducerState::NONE,
            0,
            Codec::None,
        );
    }

    #[test]
    fn reads_batches_written_by_kafka_protocol() {
        let mut headers = IndexMap::new();
        headers.insert(
            StrBytes::from_static_str("a"),
            Some(Bytes::from_static(b"1")),
        );
        headers.insert(StrBytes::from_static_str("n"), None);
        let records: Vec<Record> = (0..5)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: i as i32,
                timestamp: 1000 + i,
                key: None,
                value: Some(Bytes::from(vec![i as u8; 70])),
                headers: headers.clone(),
            })
            .collect();
        for compression in [Compression::None, Compression::Zstd] {
            let mut buf = BytesMut::new();
            let opts = RecordEncodeOptions {
                version: 2,
                compression,
            };
            RecordBatchEncoder::encode(&mut buf, &records, &opts).unwrap();
            let got: Vec<RecordView> = read(&buf.freeze()).unwrap().map(Result::unwrap).collect();
            assert_eq!(got.len(), 5);
            assert_eq!(got[4].offset, 4);
            assert_eq!(got[4].timestamp, 1004);
            assert_eq!(got[4].value.as_deref(), Some(&[4u8; 70][..]));
            assert_eq!(got[2].headers[0].0, Bytes::from_static(b"a"));
            assert_eq!(got[2].headers[1].1, None);
        }
        let mut buf = BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::Gzip,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &opts).unwrap();
        assert!(matches!(read(&buf.freeze()), Err(Error::Unsupported(_))));
    }

    #[test]
    fn a_rewritten_batch_keeps_its_offsets_producer_and_span() {
        let recs: Vec<BatchRecord> = (0..6)
            .map(|i| rec(i, Some(format!("k{i}").as_bytes()), Some(b"v"), 1))
            .collect();
        let p = ProducerState {
            producer_id: 42,
            producer_epoch: 3,
        };
        for codec in [Codec::None, Codec::Gzip, Codec::Lz4, Codec::Zstd] {
            let old = write(&recs, p, 100, Codec::Zstd).unwrap();
            let kept = [1usize, 4];
            let mut w = Writer::default();
            for &i in &kept {
                let r = &recs[i];
                let headers = r.headers.iter().map(|(k, v)| (k.as_bytes(), v.as_deref()));
                w.push_at(
                    i as i32,
                    r.timestamp_ms,
                    r.key.as_deref(),
                    r.value.as_deref(),
                    headers,
                );
            }
            let span = Rewrite {
                base_offset: 1_000,
                last_offset_delta: 5,
                attributes: 0x08 | CODEC_ZSTD, // LogAppendTime, zstd
                producer: p,
                base_sequence: 100,
            };
            let mut b = w
                .finish_rewrite(span, codec, &mut Compressor::default())
                .unwrap();
            assert!(b.len() < old.len() || codec != Codec::Zstd);
            // kafka-protocol checks the CRC.
            let set = RecordBatchDecoder::decode(&mut b).unwrap();
            let got: Vec<(i64, i32, Option<Bytes>)> = set
                .records
                .iter()
                .map(|r| (r.offset, r.sequence, r.key.clone()))
                .collect();
            let want: Vec<(i64, i32, Option<Bytes>)> = kept
                .iter()
                .map(|&i| (1_000 + i as i64, 100 + i as i32, recs[i].key.clone()))
                .collect();
            assert_eq!(got, want, "{codec:?}");
            assert!(set
                .records
                .iter()
                .all(|r| r.producer_id == 42 && r.producer_epoch == 3));
            assert!(set
                .records
                .iter()
                .all(|r| r.timestamp_type == TimestampType::LogAppend));
        }
    }

    #[test]
    fn truncated_batches_are_errors_not_panics() {
        let recs: Vec<BatchRecord> = (0..3).map(|i| rec(i, Some(b"k"), Some(b"v"), 2)).collect();
        let b = write(&recs, ProducerState::NONE, 0, Codec::None).unwrap();
        for cut in 0..b.len() {
            let mut bad = BytesMut::from(&b[..cut]);
            if cut >= 12 {
                // Keep the length field consistent so the records themselves are cut.
                let len = (cut - 12) as i32;
                bad[8..12].copy_from_slice(&len.to_be_bytes());
            }
            if let Ok(rs) = read(&bad.freeze()) {
                let n = rs.filter(Result::is_ok).count();
                assert!(n < 3, "cut at {cut} still read every record");
            }
        }
    }

    #[test]
    fn the_thread_zstd_context_decodes_after_a_failed_frame() {
        let a: Vec<u8> = (0..5000u32).flat_map(|i| (i % 251).to_be_bytes()).collect();
        let b: Vec<u8> = (0..3000u32).flat_map(|i| (i * 7).to_le_bytes()).collect();
        let za = zstd::bulk::compress(&a, 1).unwrap();
        let zb = zstd::bulk::compress(&b, 3).unwrap();
        assert_eq!(decompress_zstd(&za).unwrap(), a);
        // Same stated size, damaged blocks: an error, not other bytes.
        let mut bad = za.clone();
        let mid = bad.len() / 2;
        for x in &mut bad[mid..] {
            *x ^= 0x5a;
        }
        assert!(decompress_zstd(&bad).is_err());
        // The context that failed decodes the next frames, of either size.
        assert_eq!(decompress_zstd(&zb).unwrap(), b);
        assert_eq!(decompress_zstd(&za).unwrap(), a);
    }

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<i64>()) {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            prop_assert_eq!(b.len(), varint_len(v));
            let mut r = Bytes::from(b);
            prop_assert_eq!(get_varint(&mut r).unwrap(), v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = BytesMut::from(&data[..]);
            if b.len() > 16 { b[16] = 2; }
            if let Ok(rs) = read(&b.freeze()) {
                for r in rs { let _ = r; }
            }
        }
    }
}
