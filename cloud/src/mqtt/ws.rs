//! MQTT over WebSocket (`mqtt.websocket`; MQTT 5 section 6, the same for 3.1.1): what
//! browser dashboards and MQTT.js use. The socket (plain, or TLS for `wss`) speaks the
//! HTTP upgrade handshake ([`accept`], tungstenite), then carries MQTT's byte stream in
//! binary frames; [`WsIo`] turns those frames back into a byte stream, so `conn` serves
//! it as it serves TCP.
//!
//! - Any request path is accepted (clients use `/mqtt` or `/`), as Mosquitto does.
//! - A client that offers subprotocols must offer `mqtt` (or the 3.1-era `mqttv3.1`);
//!   the server selects it. One that offers none is served anyway.
//! - Frame boundaries mean nothing: a frame may carry part of a packet or several
//!   packets (the spec says so); every packet the server writes goes out in one frame.
//! - A text frame is a protocol error (the spec: close the connection). A close frame or
//!   the end of the stream is the end of input, as a TCP FIN is.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
pub(crate) use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The subprotocols MQTT clients offer, in the order the server prefers them.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Answers the upgrade request on `stream`: a WebSocket carrying MQTT, whose frames and
/// messages are bounded by `max_packet` (the largest MQTT packet accepted) plus room
/// for a second packet sharing its frame.
pub(crate) async fn accept<S>(stream: S, max_packet: u32) -> Result<WsIo<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limit = (max_packet as usize).saturating_mul(2).saturating_add(4096);
    let config = WebSocketConfig::default()
        // tungstenite allocates its read buffer up front: 128 KiB by default, per
        // connection (1.3 GB for 10,000 idle clients).
        .read_buffer_size(4096)
        // Each frame goes to the socket when written, not when 128 KiB have gathered.
        .write_buffer_size(0)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, choose, Some(config)).await?;
    Ok(WsIo {
        ws,
        pending: Bytes::new(),
    })
}

/// The handshake callback: selects the MQTT subprotocol, or refuses a client that
/// offers only others.
// The signature is tungstenite's `Callback`; its error type is an HTTP response.
#[allow(clippy::result_large_err)]
fn choose(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let offered: Vec<&str> = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if offered.is_empty() {
        return Ok(response);
    }
    match SUBPROTOCOLS.iter().find(|p| offered.contains(p)) {
        Some(p) => {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
            Ok(response)
        }
        None => {
            let mut refusal = ErrorResponse::new(Some(
                "MQTT over WebSocket needs the subprotocol mqtt".to_string(),
            ));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            Err(refusal)
        }
    }
}

/// A WebSocket as MQTT's byte stream (see the module docs).
pub(crate) struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last binary frame read.
    pending: Bytes,
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.pending = b,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame: MQTT over WebSocket takes binary frames only",
                    )))
                }
                // tungstenite answers a ping itself; a pong needs nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    /// One frame per write. The previous frame must have left first, so a client that
    /// does not read holds up its writer (bounded by `mqtt.write_timeout_ms`) instead of
    /// growing a buffer.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = Pin::new(&mut self.ws);
        ready!(ws.poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(data)))
            .map_err(io_error)?;
        // Started on the socket now; what the socket does not take yet waits for the
        // next write or the flush.
        if let Poll::Ready(Err(e)) = Pin::new(&mut self.ws).poll_flush(cx) {
            return Poll::Ready(Err(io_error(e)));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    /// Sends a close frame and flushes.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
