//! A client connection: owns the socket and its buffers, reads and writes whole frames.

use bytes::{Buf, Bytes, BytesMut};
use common::kafka::frame::{self, Frame};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Wire(#[from] wire::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed mid-frame ({0} bytes buffered)")]
    Truncated(usize),
    #[error("frame not completed within {0:?}")]
    Stalled(Duration),
    #[error("idle for {0:?}")]
    Idle(Duration),
}

pub struct Connection<S> {
    stream: S,
    buf: BytesMut,
    max_frame: usize,
    frame_timeout: Duration,
    idle_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(
        stream: S,
        max_frame: usize,
        frame_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Connection {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            max_frame,
            frame_timeout,
            idle_timeout,
        }
    }

    /// Reads one frame body (without its length prefix). `Ok(None)` on a clean close.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            if let Some(total) = wire::frame_len(&self.buf, self.max_frame)? {
                let mut frame = self.buf.split_to(total);
                frame.advance(4);
                return Ok(Some(frame.freeze()));
            }
            // Reserve what the announced frame needs (already checked against the cap).
            if self.buf.len() >= 4 {
                let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                let want = (4 + len).saturating_sub(self.buf.len()).min(1 << 20);
                self.buf.reserve(want);
            } else {
                self.buf.reserve(4096);
            }
            let (limit, err) = if self.buf.is_empty() {
                (self.idle_timeout, Error::Idle(self.idle_timeout))
            } else {
                (self.frame_timeout, Error::Stalled(self.frame_timeout))
            };
            let n = match tokio::time::timeout(limit, self.stream.read_buf(&mut self.buf)).await {
                Ok(r) => r?,
                Err(_) => return Err(err),
            };
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::Truncated(self.buf.len()))
                };
            }
        }
    }

    /// Writes one frame (its spliced byte strings with vectored writes) and flushes.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), Error> {
        frame::write_frame(&mut self.stream, frame).await?;
        self.stream.flush().await?;
        Ok(())
    }
}
