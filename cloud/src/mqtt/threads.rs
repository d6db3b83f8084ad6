//! The MQTT listeners and connections run on their own threads, one single-threaded tokio
//! runtime each (`mqtt.threads`), apart from the Kafka side's multi-threaded runtime.
//!
//! Why: a publish wakes its subscribers' connections. On a work-stealing runtime the woken
//! task is often taken by another worker, so each message costs a cross-thread wake-up
//! (two futex calls, a context switch) on its delivery path; measured, this was most of
//! the gap to Mosquitto's single-threaded round trip. On one thread the publisher's append
//! queues the subscriber on the same run queue, the publisher yields
//! (`actions::flush_appends`) and the subscriber writes at once. With more than one
//! thread, connections are spread over them round-robin; a publisher and a subscriber on
//! different threads wake each other across threads, as before.
//!
//! 1. The listeners are bound by `crate::start` (so bind errors name the key) and handed
//!    over as std sockets; thread 0 runs the accept loops.
//! 2. Each accepted socket is moved to the next thread's runtime (`TcpStream::from_std`
//!    registers it with that thread's I/O driver), where its connection task runs to the end.
//! 3. A clean stop (`Hub::begin_stop`) first ends the accept loops, which closes the
//!    listeners, then tells every connection to store its session and close; the stop
//!    waits for them (bounded) while these threads still run.
//! 4. The threads stop when the [`Threads`] handle is dropped: each runtime is dropped with
//!    its remaining tasks, which closes their sockets, and the drop waits (bounded) for
//!    that, so that the process does not exit while a thread still drops tasks that hold
//!    the store (RocksDB aborts if its locks are torn down at exit under a live thread).

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{conn, ws, Hub};

/// How many MQTT threads `mqtt.threads: 0` means: half the cores, at least one, so the
/// other half serves Kafka clients, the store's writer thread and RocksDB's own threads.
pub(crate) fn auto_threads() -> usize {
    thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// How long dropping [`Threads`] waits for the threads to drop their runtimes.
const JOIN_WAIT: Duration = Duration::from_secs(2);

/// The running MQTT threads; dropping it stops them.
pub(crate) struct Threads {
    stop: Option<watch::Sender<()>>,
    /// One message per thread that has dropped its runtime.
    stopped: std_mpsc::Receiver<()>,
    count: usize,
}

impl Drop for Threads {
    fn drop(&mut self) {
        drop(self.stop.take());
        let deadline = Instant::now() + JOIN_WAIT;
        for _ in 0..self.count {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.stopped.recv_timeout(left).is_err() {
                warn!("an mqtt thread did not stop in time");
                return;
            }
        }
    }
}

/// The listeners to serve: plain, TLS with its acceptor, WebSocket (with an acceptor
/// for `wss`).
pub(crate) struct Listeners {
    pub(crate) plain: Option<TcpListener>,
    pub(crate) tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    pub(crate) ws: Option<(TcpListener, Option<tokio_rustls::TlsAcceptor>)>,
}

impl Threads {
    /// Starts `count` threads (at least one) serving `listeners`.
    pub(crate) fn start(
        count: usize,
        listeners: Listeners,
        hub: Arc<Hub>,
    ) -> std::io::Result<Threads> {
        let plain = listeners.plain.map(|l| l.into_std()).transpose()?;
        let tls = match listeners.tls {
            Some((l, acceptor)) => Some((l.into_std()?, acceptor)),
            None => None,
        };
        let ws = match listeners.ws {
            Some((l, acceptor)) => Some((l.into_std()?, acceptor)),
            None => None,
        };
        let (stop, stopped) = watch::channel(());
        let (done, threads_stopped) = std_mpsc::channel();
        let mut handles = Vec::new();
        for i in 0..count.max(1) {
            handles.push(spawn_runtime(i, stopped.clone(), done.clone())?);
        }
        let spread = Spread {
            handles: handles.into(),
        };
        let first = spread.handles[0].clone();
        if let Some(l) = plain {
            let (spread, hub) = (spread.clone(), hub.clone());
            first.spawn(async move {
                match TcpListener::from_std(l) {
                    Ok(l) => serve(l, spread, hub).await,
                    Err(e) => warn!(cause = %e, "mqtt listener lost"),
                }
            });
        }
        if let Some((l, acceptor)) = tls {
            let (spread, hub) = (spread.clone(), hub.clone());
            first.spawn(async move {
                match TcpListener::from_std(l) {
                    Ok(l) => serve_tls(l, acceptor, spread, hub).await,
                    Err(e) => warn!(cause = %e, "mqtts listener lost"),
                }
            });
        }
        if let Some((l, acceptor)) = ws {
            first.spawn(async move {
                match TcpListener::from_std(l) {
                    Ok(l) => serve_ws(l, acceptor, spread, hub).await,
                    Err(e) => warn!(cause = %e, "mqtt websocket listener lost"),
                }
            });
        }
        Ok(Threads {
            stop: Some(stop),
            stopped: threads_stopped,
            count: count.max(1),
        })
    }
}

/// One thread with a single-threaded runtime that runs until the stop sender is dropped,
/// then drops the runtime (and its tasks) and says so on `done`.
fn spawn_runtime(
    i: usize,
    mut stopped: watch::Receiver<()>,
    done: std_mpsc::Sender<()>,
) -> std::io::Result<Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    thread::Builder::new()
        .name(format!("mqtt-{i}"))
        .spawn(move || {
            rt.block_on(async move { while stopped.changed().await.is_ok() {} });
            drop(rt);
            let _ = done.send(());
        })?;
    Ok(handle)
}

/// Hands connections to the threads in turn.
#[derive(Clone)]
struct Spread {
    handles: Arc<[Handle]>,
}

impl Spread {
    /// Runs `task` with the socket moved to the next thread's runtime.
    fn run<F, Fut>(&self, next: &mut usize, sock: TcpStream, peer: SocketAddr, task: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let _ = sock.set_nodelay(true);
        let handle = &self.handles[*next % self.handles.len()];
        *next = next.wrapping_add(1);
        if self.handles.len() == 1 {
            tokio::spawn(task(sock));
            return;
        }
        let std = match sock.into_std() {
            Ok(s) => s,
            Err(e) => {
                debug!(%peer, cause = %e, "connection not handed over");
                return;
            }
        };
        handle.spawn(async move {
            match TcpStream::from_std(std) {
                Ok(sock) => task(sock).await,
                Err(e) => debug!(%peer, cause = %e, "connection not handed over"),
            }
        });
    }
}

/// Accepts connections on `listener` until the stop begins; `serve_one` serves each on
/// the thread it was handed to. `what` names the listener in logs.
async fn accept_loop<F, Fut>(
    what: &'static str,
    listener: TcpListener,
    spread: Spread,
    hub: Arc<Hub>,
    serve_one: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<Hub>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut next = 0;
    let mut stop = hub.stop_signal();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return debug!(listener = what, "listener closed for the stop"),
            a = listener.accept() => a,
        };
        match accepted {
            Ok((sock, peer)) => {
                let (hub, serve_one) = (hub.clone(), serve_one.clone());
                spread.run(&mut next, sock, peer, move |s| serve_one(s, peer, hub));
            }
            Err(e) => {
                // EMFILE and friends: keep serving the connections we have, try again shortly.
                warn!(listener = what, cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Plain MQTT.
async fn serve(listener: TcpListener, spread: Spread, hub: Arc<Hub>) {
    accept_loop("mqtt", listener, spread, hub, |s, peer, hub| {
        conn::serve(s, peer, hub, None)
    })
    .await
}

/// MQTT over TLS; a failed handshake closes that connection only.
async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    spread: Spread,
    hub: Arc<Hub>,
) {
    accept_loop("mqtts", listener, spread, hub, move |s, peer, hub| {
        let acceptor = acceptor.clone();
        async move {
            let timeout = Duration::from_millis(hub.config.connect_timeout_ms);
            match tokio::time::timeout(timeout, acceptor.accept(s)).await {
                Ok(Ok(tls)) => {
                    let id = crate::identity::of(&tls);
                    conn::serve(tls, peer, hub, id).await
                }
                Ok(Err(e)) => debug!(%peer, cause = %e, "tls handshake failed"),
                Err(_) => debug!(%peer, "tls handshake timed out"),
            }
        }
    })
    .await
}

/// MQTT over WebSocket (`ws`, or `wss` with `acceptor`); a failed TLS or WebSocket
/// handshake closes that connection only. Both handshakes together get
/// `mqtt.connect_timeout_ms`.
async fn serve_ws(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    spread: Spread,
    hub: Arc<Hub>,
) {
    let what = if acceptor.is_some() {
        "mqtt-wss"
    } else {
        "mqtt-ws"
    };
    accept_loop(what, listener, spread, hub, move |s, peer, hub| {
        let acceptor = acceptor.clone();
        async move {
            let max_packet = hub.config.max_packet_bytes;
            match acceptor {
                Some(a) => {
                    let handshakes = async move {
                        let tls = a.accept(s).await.map_err(ws::WsError::Io)?;
                        ws::accept(tls, max_packet).await
                    };
                    serve_upgraded(Box::pin(handshakes), peer, hub).await
                }
                None => serve_upgraded(Box::pin(ws::accept(s, max_packet)), peer, hub).await,
            }
        }
    })
    .await
}

/// Serves the connection `handshakes` upgrade, if they end within
/// `mqtt.connect_timeout_ms`.
async fn serve_upgraded<S, F>(handshakes: F, peer: SocketAddr, hub: Arc<Hub>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: std::future::Future<Output = Result<ws::WsIo<S>, ws::WsError>> + Unpin,
{
    let timeout = Duration::from_millis(hub.config.connect_timeout_ms);
    // The handshakes (boxed by the caller) and the connection are boxed: inline, the
    // task stays sized for the largest of the handshakes' and the connection's states
    // over TLS, whichever listener it came from (21.6 KB per idle WebSocket connection,
    // measured with heaptrack, against 6.5 KB for a whole idle TCP connection).
    match tokio::time::timeout(timeout, handshakes).await {
        Ok(Ok(io)) => Box::pin(conn::serve(io, peer, hub, None)).await,
        Ok(Err(e)) => debug!(%peer, cause = %e, "websocket handshake failed"),
        Err(_) => debug!(%peer, "websocket handshake timed out"),
    }
}
