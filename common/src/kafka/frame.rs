//! A Kafka frame built for a gather write: small fields in a buffer, large byte strings
//! (record batches) spliced in by reference instead of copied (bytes only; the one I/O
//! function, [`write_frame`], writes a finished frame to a stream).
//!
//! Produce requests (the edge's uplink, `produce.rs`) and Fetch responses (the cloud's
//! `wire::fetch`) are almost all record batches that already exist as [`Bytes`]:
//! `kafka-protocol`'s encoders copy each into the frame's buffer, so every byte was
//! copied once more and a connection's buffer grew to its largest frame. The encoders
//! built on this module write exactly the bytes `kafka-protocol` would (each is tested
//! against it for every version it speaks).

use std::io::IoSlice;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::Error;

/// Byte strings shorter than this are copied into the buffer rather than spliced: a
/// splice costs two I/O slices, which is more than copying a few kilobytes.
pub const SPLICE_MIN: usize = 4096;

/// A frame under construction: `buf` with `splices` inserted, each `(offset, bytes)`
/// meaning `bytes` follows `buf[..offset]` (offsets ascending).
#[derive(Default)]
pub struct Frame {
    /// The frame's own bytes (length prefix, header and small fields).
    pub buf: BytesMut,
    /// Large byte strings spliced into `buf`, in order.
    pub splices: Vec<(usize, Bytes)>,
}

impl Frame {
    /// A frame that starts as `buf`, with nothing spliced yet.
    pub fn new(buf: BytesMut) -> Frame {
        Frame {
            buf,
            splices: Vec::new(),
        }
    }

    /// Total length of the frame as written.
    pub fn len(&self) -> usize {
        self.buf.len() + self.splices.iter().map(|(_, b)| b.len()).sum::<usize>()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's pieces in write order (empty pieces left out).
    pub fn pieces(&self) -> Vec<&[u8]> {
        let mut out = Vec::with_capacity(2 * self.splices.len() + 1);
        let mut at = 0;
        for (offset, b) in &self.splices {
            out.push(&self.buf[at..*offset]);
            out.push(&b[..]);
            at = *offset;
        }
        out.push(&self.buf[at..]);
        out.retain(|p| !p.is_empty());
        out
    }

    /// Appends `b`: copied when shorter than [`SPLICE_MIN`], spliced otherwise.
    pub fn put_bytes(&mut self, b: &Bytes) {
        if b.len() < SPLICE_MIN {
            self.buf.put_slice(b);
        } else {
            self.splices.push((self.buf.len(), b.clone()));
        }
    }

    /// Sets the 4-byte length prefix at the start of `buf` to the rest of the frame.
    pub fn set_length_prefix(&mut self) -> Result<(), Error> {
        let len = self
            .len()
            .checked_sub(4)
            .ok_or_else(|| Error::Encode("frame without a length prefix".into()))?;
        let len = i32::try_from(len).map_err(|_| Error::Encode("frame too big".into()))?;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
}

/// Appends the length of an array, string or byte string: a compact (varint, length + 1)
/// length in `flexible` versions, else an `i16` (`short`: strings) or `i32`.
pub fn put_len(f: &mut Frame, flexible: bool, len: usize, short: bool) -> Result<(), Error> {
    if flexible {
        let n = u32::try_from(len + 1).map_err(|_| Error::Encode("length too large".into()))?;
        put_varint(&mut f.buf, n);
    } else if short {
        let n = i16::try_from(len).map_err(|_| Error::Encode("string too long".into()))?;
        f.buf.put_i16(n);
    } else {
        let n = i32::try_from(len).map_err(|_| Error::Encode("length too large".into()))?;
        f.buf.put_i32(n);
    }
    Ok(())
}

/// Appends an unsigned varint.
pub fn put_varint(buf: &mut BytesMut, mut n: u32) {
    while n >= 0x80 {
        buf.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

/// Appends an empty tagged-field section in `flexible` versions (nothing otherwise).
pub fn put_tags(f: &mut Frame, flexible: bool) {
    if flexible {
        f.buf.put_u8(0);
    }
}

/// Writes `f`'s pieces in order with vectored writes (a stream that does not support them
/// takes one piece per call).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    let pieces = f.pieces();
    if let [one] = pieces[..] {
        return w.write_all(one).await;
    }
    let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = w.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn a_spliced_frame_is_written_whole_through_short_writes() {
        let mut f = Frame::default();
        f.buf.put_slice(b"head");
        let big: Bytes = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        f.splices.push((f.buf.len(), big.clone()));
        f.buf.put_slice(b"middle");
        f.splices.push((f.buf.len(), big.clone()));
        f.splices
            .push((f.buf.len(), Bytes::from_static(b"adjacent")));
        f.buf.put_slice(b"tail");
        let want = [&b"head"[..], &big, b"middle", &big, b"adjacent", b"tail"].concat();
        assert_eq!(f.len(), want.len());
        // A pipe that takes at most 1000 bytes at a time: every write is short.
        let (mut a, mut b) = tokio::io::duplex(1000);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.map(|_| got)
        });
        write_frame(&mut a, &f).await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap().unwrap(), want);
    }

    #[test]
    fn the_length_prefix_counts_the_splices() {
        let mut f = Frame::default();
        f.buf.put_i32(0);
        f.buf.put_slice(b"ab");
        f.put_bytes(&Bytes::from(vec![7u8; SPLICE_MIN]));
        f.put_bytes(&Bytes::from_static(b"small"));
        assert_eq!(f.splices.len(), 1, "only the large string is spliced");
        f.set_length_prefix().unwrap();
        let flat = f.pieces().concat();
        assert_eq!(flat.len(), 4 + 2 + SPLICE_MIN + 5);
        assert_eq!(&flat[..4], &((2 + SPLICE_MIN + 5) as i32).to_be_bytes());
        assert!(Frame::default().set_length_prefix().is_err());
    }
}
