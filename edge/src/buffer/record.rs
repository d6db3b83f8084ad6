//! The buffer's record and batch codec: bytes in, bytes out, no I/O.
//!
//! A batch file holds one or more *segments*, one per group commit that wrote to it
//! (`sync: always` appends to a file's end while it grows, see the module docs):
//!
//! ```text
//! file    = segment+
//! segment = magic:u8 (=1) | count:u32 | record{count}
//! record = len:u32 | crc32(body):u32 | body
//! body   = seq:u64 | recv_ms:i64 | flags:u8 (bit0 clock synced, bit1 retain, bits2-3 qos)
//!        | priority:u8 | topic:str16 | key:opt16 | content_type:opt16
//!        | payload_format:u8 (0xFF = none) | response_topic:opt16 | correlation:opt32
//!        | user_count:u16 | (name:str16 | value:str16)* | payload_len:u32 | payload
//! str16 = len:u16 | bytes          opt16 = 0xFFFF (none) | str16
//! opt32 = 0xFFFFFFFF (none) | len:u32 | bytes
//! ```
//!
//! Each record carries its own CRC, so one damaged record is skipped without losing its
//! neighbours; a damaged first segment header loses the batch (counted by the caller), a
//! damaged later one the rest of the file (counted as one corrupt record). A file with
//! one segment is the layout before segments existed, so old buffers read unchanged.

use bytes::{Buf, BufMut, Bytes};

/// MQTT 5 publish properties kept with a record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    /// Content type.
    pub content_type: Option<String>,
    /// Payload format indicator.
    pub payload_format: Option<u8>,
    /// Response topic.
    pub response_topic: Option<String>,
    /// Correlation data.
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user: Vec<(String, String)>,
}

/// One buffered MQTT publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Arrival-order sequence, persisted, never reused.
    pub seq: u64,
    /// Receive time, ms since the Unix epoch.
    pub recv_ms: i64,
    /// Whether the clock was synchronised at receive time.
    pub clock_synced: bool,
    /// Publisher's QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Priority class (higher is kept longer).
    pub priority: u8,
    /// MQTT topic name.
    pub topic: String,
    /// Record key (the publisher's client id by default).
    pub key: Option<Bytes>,
    /// MQTT 5 properties.
    pub props: Props,
    /// Payload, untouched.
    pub payload: Bytes,
}

/// Why bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The batch header is damaged; the whole batch is unreadable.
    #[error("corrupt batch header")]
    BadBatch,
}

const MAGIC: u8 = 1;

fn put_str16(b: &mut impl BufMut, s: &[u8]) {
    let len = s.len().min(0xFFFE);
    b.put_u16(len as u16);
    b.put_slice(&s[..len]);
}

fn put_opt16(b: &mut impl BufMut, s: Option<&[u8]>) {
    match s {
        Some(s) => put_str16(b, s),
        None => b.put_u16(0xFFFF),
    }
}

impl Record {
    /// Approximate encoded size, used for quotas and batch cuts.
    pub fn encoded_len(&self) -> usize {
        let props = self.props.content_type.as_ref().map_or(0, String::len)
            + self.props.response_topic.as_ref().map_or(0, String::len)
            + self.props.correlation_data.as_ref().map_or(0, Bytes::len)
            + self
                .props
                .user
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>();
        8 + 8
            + 8
            + 2
            + 2
            + self.topic.len()
            + 2
            + self.key.as_ref().map_or(0, Bytes::len)
            + 2
            + 1
            + 2
            + 4
            + 2
            + props
            + 4
            + self.payload.len()
    }

    fn encode_body(&self, b: &mut impl BufMut) {
        b.put_u64(self.seq);
        b.put_i64(self.recv_ms);
        let flags =
            u8::from(self.clock_synced) | (u8::from(self.retain) << 1) | ((self.qos & 3) << 2);
        b.put_u8(flags);
        b.put_u8(self.priority);
        put_str16(b, self.topic.as_bytes());
        put_opt16(b, self.key.as_deref());
        put_opt16(b, self.props.content_type.as_deref().map(str::as_bytes));
        b.put_u8(self.props.payload_format.unwrap_or(0xFF));
        put_opt16(b, self.props.response_topic.as_deref().map(str::as_bytes));
        match &self.props.correlation_data {
            Some(c) => {
                b.put_u32(c.len() as u32);
                b.put_slice(c);
            }
            None => b.put_u32(u32::MAX),
        }
        let n = self.props.user.len().min(0xFFFF);
        b.put_u16(n as u16);
        for (k, v) in &self.props.user[..n] {
            put_str16(b, k.as_bytes());
            put_str16(b, v.as_bytes());
        }
        b.put_u32(self.payload.len() as u32);
        b.put_slice(&self.payload);
    }

    fn decode_body(mut b: Bytes) -> Option<Record> {
        fn need(b: &Bytes, n: usize) -> Option<()> {
            (b.remaining() >= n).then_some(())
        }
        fn str16(b: &mut Bytes) -> Option<Bytes> {
            need(b, 2)?;
            let len = usize::from(b.get_u16());
            need(b, len)?;
            Some(b.split_to(len))
        }
        fn opt16(b: &mut Bytes) -> Option<Option<Bytes>> {
            need(b, 2)?;
            if b[..2] == [0xFF, 0xFF] {
                b.advance(2);
                return Some(None);
            }
            str16(b).map(Some)
        }
        fn string(b: Bytes) -> Option<String> {
            String::from_utf8(b.to_vec()).ok()
        }
        need(&b, 18)?;
        let seq = b.get_u64();
        let recv_ms = b.get_i64();
        let flags = b.get_u8();
        let priority = b.get_u8();
        let topic = string(str16(&mut b)?)?;
        let key = opt16(&mut b)?;
        let content_type = match opt16(&mut b)? {
            Some(x) => Some(string(x)?),
            None => None,
        };
        need(&b, 1)?;
        let pf = b.get_u8();
        let response_topic = match opt16(&mut b)? {
            Some(x) => Some(string(x)?),
            None => None,
        };
        need(&b, 4)?;
        let clen = b.get_u32();
        let correlation_data = if clen == u32::MAX {
            None
        } else {
            need(&b, clen as usize)?;
            Some(b.split_to(clen as usize))
        };
        need(&b, 2)?;
        let n = b.get_u16();
        let mut user = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let k = string(str16(&mut b)?)?;
            let v = string(str16(&mut b)?)?;
            user.push((k, v));
        }
        need(&b, 4)?;
        let plen = b.get_u32() as usize;
        need(&b, plen)?;
        let payload = b.split_to(plen);
        Some(Record {
            seq,
            recv_ms,
            clock_synced: flags & 1 != 0,
            retain: flags & 2 != 0,
            qos: (flags >> 2) & 3,
            priority,
            topic,
            key,
            props: Props {
                content_type,
                payload_format: (pf != 0xFF).then_some(pf),
                response_topic,
                correlation_data,
                user,
            },
            payload,
        })
    }
}

/// Encodes records as one batch value. Each payload is copied once, into the result.
pub fn encode_batch(records: &[Record]) -> Vec<u8> {
    let mut b = Vec::new();
    encode_batch_into(records, &mut b);
    b
}

/// [`encode_batch`] into `b` (cleared first), so a caller that writes batch after batch
/// reuses one buffer: a fresh one per batch file is a `mmap`, page faults and a
/// `munmap` each (batches are larger than the edge's `MALLOC_MMAP_THRESHOLD_`).
pub fn encode_batch_into(records: &[Record], b: &mut Vec<u8>) {
    b.clear();
    b.reserve(batch_len_bound(records));
    encode_batch_append(records, b);
}

/// An upper bound of the encoded length of `records` as one batch (exact but for the
/// bound [`Record::encoded_len`] gives each record).
pub fn batch_len_bound(records: &[Record]) -> usize {
    5 + records.iter().map(|r| r.encoded_len() + 8).sum::<usize>()
}

/// Appends the encoded batch to `b` (which has room for it).
fn encode_batch_append(records: &[Record], b: &mut Vec<u8>) {
    b.put_u8(MAGIC);
    b.put_u32(records.len() as u32);
    for r in records {
        // Length and CRC go before the body: reserve them, encode in place, patch.
        let at = b.len();
        b.put_u64(0);
        r.encode_body(b);
        let len = (b.len() - at - 8) as u32;
        let crc = crc32fast::hash(&b[at + 8..]);
        b[at..at + 4].copy_from_slice(&len.to_be_bytes());
        b[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
    }
}

/// [`encode_batch_into`] for a direct write (`O_DIRECT`, `files::write_direct`): the
/// batch starts at an `align`-aligned address inside `b` and is followed by zeros up to
/// a multiple of `align` (a batch file may end in zeros: readers stop at its index
/// length, the open cuts them). Returns where the batch starts in `b` and its length
/// without the zeros; `b[start..]` is the block to write. `align` is a power of two.
/// `None` (and `b` empty) if the allocation gives no aligned address.
pub fn encode_batch_aligned(
    records: &[Record],
    b: &mut Vec<u8>,
    align: usize,
) -> Option<(usize, usize)> {
    let room = batch_len_bound(records);
    b.clear();
    // Room for the alignment gap and the zeros too, so the vector never moves (and
    // loses its alignment) while the batch is encoded.
    b.reserve(room + 2 * align);
    let start = b.as_ptr().align_offset(align);
    if start >= align {
        return None;
    }
    b.resize(start, 0);
    encode_batch_append(records, b);
    // `encoded_len` is an upper bound, so the vector did not move; if it ever did, the
    // caller encodes again for a write through the page cache.
    if b[start..].as_ptr().align_offset(align) != 0 {
        return None;
    }
    let len = b.len() - start;
    b.resize(start + len.div_ceil(align) * align, 0);
    Some((start, len))
}

/// A decoded batch: the readable records and how many were skipped as corrupt.
#[derive(Debug, Default)]
pub struct DecodedBatch {
    /// Records whose CRC and layout check out, in order.
    pub records: Vec<Record>,
    /// Records skipped because their CRC or layout is wrong.
    pub corrupt: u64,
}

/// Decodes a batch value; corrupt records are skipped and counted.
pub fn decode_batch(value: &[u8]) -> Result<DecodedBatch, CodecError> {
    decode_batch_bytes(Bytes::copy_from_slice(value))
}

/// [`decode_batch`] without copying: record payloads are slices of `b`.
pub fn decode_batch_bytes(mut b: Bytes) -> Result<DecodedBatch, CodecError> {
    if b.remaining() < 5 || b[0] != MAGIC {
        return Err(CodecError::BadBatch);
    }
    let mut out = DecodedBatch::default();
    while b.has_remaining() {
        if b.remaining() < 5 || b.get_u8() != MAGIC {
            // A later segment's header is damaged: the rest of the file is unreadable.
            out.corrupt += 1;
            break;
        }
        let count = b.get_u32();
        for _ in 0..count {
            match next_record(&mut b) {
                Some(Some(r)) => out.records.push(r),
                Some(None) => out.corrupt += 1,
                None => {
                    // The length itself is damaged: the rest of the batch is unreadable.
                    out.corrupt += 1;
                    b.advance(b.remaining());
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// The next record of a segment: `None` if its length does not fit (nothing after it is
/// readable), `Some(None)` if its CRC or layout is wrong (skipped).
fn next_record(b: &mut Bytes) -> Option<Option<Record>> {
    if b.remaining() < 8 {
        return None;
    }
    let len = b.get_u32() as usize;
    let crc = b.get_u32();
    if b.remaining() < len {
        return None;
    }
    let body = b.split_to(len);
    if crc32fast::hash(&body) != crc {
        return Some(None);
    }
    Some(Record::decode_body(body))
}

/// The intact prefix of a batch file: whole segments whose every record reads back
/// with its CRC, with sequences rising through the file. What follows it is a segment
/// whose commit never completed (a torn append: its records were never acknowledged) or
/// damage. Used at open; reads go through [`decode_batch_bytes`].
#[derive(Debug, Default)]
pub struct IntactPrefix {
    /// Bytes of the intact segments.
    pub len: usize,
    /// Records in them.
    pub count: u32,
    /// Sequence, priority and receive time of the first record, if any.
    pub first: Option<(u64, u8, i64)>,
    /// Highest sequence.
    pub last_seq: u64,
}

/// Finds the [`IntactPrefix`] of `b`.
pub fn intact_prefix(mut b: Bytes) -> IntactPrefix {
    let total = b.len();
    let mut out = IntactPrefix::default();
    'segments: while b.remaining() >= 5 && b[0] == MAGIC {
        b.advance(1);
        let count = b.get_u32();
        if count == 0 {
            // Never written (every segment holds a record): not a segment.
            break;
        }
        let mut seg = IntactPrefix {
            first: out.first,
            last_seq: out.last_seq,
            ..IntactPrefix::default()
        };
        for _ in 0..count {
            let Some(Some(r)) = next_record(&mut b) else {
                break 'segments;
            };
            if seg.first.is_some() && r.seq <= seg.last_seq {
                break 'segments;
            }
            seg.first.get_or_insert((r.seq, r.priority, r.recv_ms));
            seg.last_seq = r.seq;
            seg.count += 1;
        }
        out.len = total - b.remaining();
        out.count += seg.count;
        out.first = seg.first;
        out.last_seq = seg.last_seq;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            any::<u64>(),
            any::<i64>(),
            any::<bool>(),
            0u8..3,
            any::<bool>(),
            any::<u8>(),
            "[a-z/]{1,20}",
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
            proptest::option::of("[a-z/]{0,10}"),
            proptest::option::of(0u8..2),
            proptest::collection::vec(("[a-z]{1,5}", "[a-z]{0,5}"), 0..3),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(
                |(seq, recv_ms, cs, qos, retain, priority, topic, key, ct, pf, user, payload)| {
                    Record {
                        seq,
                        recv_ms,
                        clock_synced: cs,
                        qos,
                        retain,
                        priority,
                        topic,
                        key: key.map(Bytes::from),
                        props: Props {
                            content_type: ct.clone(),
                            payload_format: pf,
                            response_topic: ct,
                            correlation_data: pf.map(|_| Bytes::from_static(b"c")),
                            user,
                        },
                        payload: Bytes::from(payload),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn batch_round_trip(recs in proptest::collection::vec(arb_record(), 0..10)) {
            let bytes = encode_batch(&recs);
            let back = decode_batch(&bytes).unwrap();
            prop_assert_eq!(back.corrupt, 0);
            prop_assert_eq!(back.records, recs);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_batch(&bytes);
        }

        /// What a recycled spare holds once reused (`spares.rs`): the new file's segments
        /// written over an older file's, whose records all have lower sequences, the old
        /// bytes left after them (and zeros of a pre-size after those). The intact prefix
        /// is exactly the new segments, wherever the old segment boundaries fall: here
        /// either anywhere (new records of their own) or right where the new ones end
        /// (new segments the same size as the old file's first ones, as records of one
        /// size make them).
        #[test]
        fn a_reused_files_old_records_are_not_in_its_intact_prefix(
            old in proptest::collection::vec(
                proptest::collection::vec(arb_record(), 1..4), 2..6),
            own in proptest::collection::vec(
                proptest::collection::vec(arb_record(), 1..4), 1..4),
            aligned in any::<bool>(),
            zeros in 0usize..64,
        ) {
            let mut seq = 0;
            let mut numbered = |segments: &[Vec<Record>]| -> Vec<u8> {
                let mut out = Vec::new();
                for seg in segments {
                    let mut seg = seg.clone();
                    for r in &mut seg {
                        seq += 1 + r.seq % 3;
                        r.seq = seq;
                    }
                    out.extend(encode_batch(&seg));
                }
                out
            };
            let mut file = numbered(&old);
            let new_bytes = if aligned {
                numbered(&old[..old.len() - 1])
            } else {
                numbered(&own)
            };
            let new_count = decode_batch(&new_bytes).unwrap().records.len() as u32;
            if file.len() < new_bytes.len() {
                file.resize(new_bytes.len(), 0);
            }
            if aligned {
                let rest = intact_prefix(Bytes::copy_from_slice(&file[new_bytes.len()..]));
                prop_assert!(rest.count > 0, "an old segment starts where the new ones end");
            }
            file[..new_bytes.len()].copy_from_slice(&new_bytes);
            file.extend(std::iter::repeat_n(0, zeros));
            let prefix = intact_prefix(Bytes::from(file));
            prop_assert_eq!(prefix.len, new_bytes.len());
            prop_assert_eq!(prefix.count, new_count);
        }
    }

    #[test]
    fn flipped_byte_skips_one_record() {
        let recs: Vec<Record> = (0..3)
            .map(|i| Record {
                seq: i,
                topic: "a".into(),
                payload: Bytes::from_static(b"hello"),
                ..Record::default()
            })
            .collect();
        let mut bytes = encode_batch(&recs);
        let second = 5 + (bytes.len() - 5) / 3 + 12;
        bytes[second] ^= 0xFF;
        let back = decode_batch(&bytes).unwrap();
        assert_eq!(back.corrupt, 1);
        assert_eq!(
            back.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [0, 2]
        );
    }
}
