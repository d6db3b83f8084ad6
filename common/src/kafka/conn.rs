//! One Kafka connection with pipelining: several requests in flight, responses matched
//! to requests by correlation id (Kafka answers in request order on a connection).
//!
//! Writes go through an async mutex (one frame at a time); a reader task owns the read
//! half, reads length-prefixed frames and completes the oldest pending request. A broken
//! connection fails every pending request with [`Error::Closed`]; the caller reconnects.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, WriteHalf};
use tokio::sync::{oneshot, Mutex};

use super::frame::{write_frame, Frame};
use super::Error;

/// Largest response frame accepted (bytes).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

struct Pending {
    correlation_id: i32,
    tx: oneshot::Sender<Result<Bytes, Error>>,
}

#[derive(Default)]
struct Shared {
    pending: VecDeque<Pending>,
    closed: Option<String>,
}

struct Writer<S> {
    half: WriteHalf<S>,
    next_correlation_id: i32,
    buf: BytesMut,
}

pub use crate::net::Stream;

/// A pipelined Kafka connection.
pub struct Connection {
    writer: Mutex<Writer<Box<dyn Stream>>>,
    shared: Arc<StdMutex<Shared>>,
    client_id: StrBytes,
    versions: HashMap<i16, (i16, i16)>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A response that has not arrived yet.
pub struct ResponseFuture<R> {
    rx: oneshot::Receiver<Result<Bytes, Error>>,
    header_version: i16,
    version: i16,
    _marker: std::marker::PhantomData<fn() -> R>,
}

impl<R: Decodable> ResponseFuture<R> {
    /// The response if it has already arrived (never waits).
    pub fn try_take(&mut self) -> Option<Result<R, Error>> {
        match self.rx.try_recv() {
            Ok(frame) => Some(frame.and_then(|f| self.decode(f))),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => {
                Some(Err(Error::Closed("reader stopped".into())))
            }
        }
    }

    fn decode(&self, mut frame: Bytes) -> Result<R, Error> {
        ResponseHeader::decode(&mut frame, self.header_version).map_err(Error::decode)?;
        R::decode(&mut frame, self.version).map_err(Error::decode)
    }

    /// Waits for and decodes the response.
    pub async fn wait(mut self) -> Result<R, Error> {
        self.recv().await
    }

    /// Waits for and decodes the response without consuming the future, so it can wait
    /// in a `select!` (cancel safe: until it completes, the response stays in the future).
    /// Call it at most until it has returned once.
    pub async fn recv(&mut self) -> Result<R, Error> {
        let frame = (&mut self.rx)
            .await
            .map_err(|_| Error::Closed("reader stopped".into()))??;
        self.decode(frame)
    }
}

impl Connection {
    /// Opens a plain TCP connection and negotiates API versions.
    pub async fn connect(addr: &str, client_id: &str) -> Result<Self, Error> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Self::handshake(Box::new(tcp), client_id).await
    }

    /// Runs the ApiVersions handshake over an established stream.
    pub async fn handshake(stream: Box<dyn Stream>, client_id: &str) -> Result<Self, Error> {
        let (read, write) = tokio::io::split(stream);
        let shared = Arc::new(StdMutex::new(Shared::default()));
        let reader = tokio::spawn(read_loop(read, shared.clone()));
        let mut conn = Connection {
            writer: Mutex::new(Writer {
                half: write,
                next_correlation_id: 1,
                buf: BytesMut::new(),
            }),
            shared,
            client_id: StrBytes::from_string(client_id.to_owned()),
            versions: HashMap::new(),
            reader,
        };
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("edge-cloud-sync"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp: ApiVersionsResponse = conn.send_versioned(&req, 3).await?.wait().await?;
        if resp.error_code != 0 {
            return Err(Error::Broker {
                api: "ApiVersions",
                code: resp.error_code,
            });
        }
        for k in resp.api_keys {
            conn.versions
                .insert(k.api_key, (k.min_version, k.max_version));
        }
        Ok(conn)
    }

    /// Highest version of `key` both sides support.
    pub fn version_for(&self, key: ApiKey) -> Result<i16, Error> {
        let ours = key.valid_versions();
        self.version_within(key, ours.min, ours.max)
    }

    /// Highest version of `key` in `lo..=hi` that the broker supports.
    pub fn version_within(&self, key: ApiKey, lo: i16, hi: i16) -> Result<i16, Error> {
        let (min, max) = self
            .versions
            .get(&(key as i16))
            .copied()
            .ok_or(Error::Unsupported(key))?;
        let v = max.min(hi);
        if v < min.max(lo) {
            return Err(Error::Unsupported(key));
        }
        Ok(v)
    }

    /// Sends `req` at the negotiated version; returns a future for the response.
    pub async fn send<R: Request>(&self, req: &R) -> Result<ResponseFuture<R::Response>, Error> {
        let key = ApiKey::try_from(R::KEY).map_err(|_| Error::Unsupported(ApiKey::ApiVersions))?;
        let version = self.version_for(key)?;
        self.send_versioned(req, version).await
    }

    /// Sends `req` at `version`; returns a future for the response.
    pub async fn send_versioned<R: Request>(
        &self,
        req: &R,
        version: i16,
    ) -> Result<ResponseFuture<R::Response>, Error> {
        self.send_frame(R::KEY, version, |f| {
            req.encode(&mut f.buf, version).map_err(Error::encode)
        })
        .await
    }

    /// Sends a request of API `api` at `version` whose body `body` appends to the frame
    /// (its large byte strings may be spliced, see [`Frame`]); returns a future for the
    /// response, decoded as `Resp`.
    pub(crate) async fn send_frame<Resp>(
        &self,
        api: i16,
        version: i16,
        body: impl FnOnce(&mut Frame) -> Result<(), Error>,
    ) -> Result<ResponseFuture<Resp>, Error> {
        let key = ApiKey::try_from(api).map_err(|_| Error::Unsupported(ApiKey::ApiVersions))?;
        let mut w = self.writer.lock().await;
        let correlation_id = w.next_correlation_id;
        w.next_correlation_id = w.next_correlation_id.wrapping_add(1).max(1);
        let header = RequestHeader::default()
            .with_request_api_key(api)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut frame = Frame::new(std::mem::take(&mut w.buf));
        frame.buf.clear();
        frame.buf.put_i32(0);
        header
            .encode(&mut frame.buf, key.request_header_version(version))
            .map_err(Error::encode)?;
        body(&mut frame)?;
        frame.set_length_prefix()?;
        let (tx, rx) = oneshot::channel();
        {
            let mut s = lock(&self.shared);
            if let Some(why) = &s.closed {
                return Err(Error::Closed(why.clone()));
            }
            s.pending.push_back(Pending { correlation_id, tx });
        }
        let res = write_frame(&mut w.half, &frame).await;
        w.buf = frame.buf;
        if let Err(e) = res {
            fail_all(&self.shared, format!("write failed: {e}"));
            return Err(e.into());
        }
        Ok(ResponseFuture {
            rx,
            header_version: key.response_header_version(version),
            version,
            _marker: std::marker::PhantomData,
        })
    }

    /// Number of requests awaiting a response.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared).pending.len()
    }
}

fn lock(m: &StdMutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail_all(shared: &StdMutex<Shared>, why: String) {
    let mut s = lock(shared);
    s.closed.get_or_insert(why.clone());
    for p in s.pending.drain(..) {
        let _ = p.tx.send(Err(Error::Closed(why.clone())));
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut read: R, shared: Arc<StdMutex<Shared>>) {
    let why = loop {
        let len = match read.read_i32().await {
            Ok(len) => len,
            Err(e) => break format!("read failed: {e}"),
        };
        let Ok(len) = usize::try_from(len) else {
            break format!("negative frame length {len}");
        };
        if !(4..=MAX_RESPONSE_BYTES).contains(&len) {
            break format!("response frame of {len} bytes out of range");
        }
        let mut frame = BytesMut::zeroed(len);
        if let Err(e) = read.read_exact(&mut frame).await {
            break format!("read failed: {e}");
        }
        let frame = frame.freeze();
        let correlation_id = (&frame[..4]).get_i32();
        let mut s = lock(&shared);
        match s.pending.pop_front() {
            Some(p) if p.correlation_id == correlation_id => {
                let _ = p.tx.send(Ok(frame));
            }
            Some(p) => {
                let why = format!(
                    "correlation id {correlation_id} does not match {}",
                    p.correlation_id
                );
                let _ = p.tx.send(Err(Error::Closed(why.clone())));
                drop(s);
                break why;
            }
            None => {
                drop(s);
                break format!("unsolicited response {correlation_id}");
            }
        }
    };
    tracing::debug!(cause = %why, "kafka connection closed");
    fail_all(&shared, why);
}
