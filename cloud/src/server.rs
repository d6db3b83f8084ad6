//! The Kafka listener: accepts connections and runs one task per connection, with a
//! tracing span carrying the peer. Requests on a connection are answered in order.
//!
//! With `kafka.tls` the TLS handshake (bounded by `kafka.frame_timeout_ms`) comes first;
//! a failed handshake closes that connection only. With `kafka.sasl` the connection
//! starts unauthenticated (see `api::sasl`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Instrument};

use crate::api::{self, sasl::Sasl, Peer};
use crate::broker::Broker;
use crate::connection::{self, Connection};

pub(crate) async fn serve(listener: TcpListener, broker: Arc<Broker>, tls: Option<TlsAcceptor>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let broker = broker.clone();
                let span = tracing::info_span!("kafka", %peer);
                let Some(acceptor) = tls.clone() else {
                    tokio::spawn(run(stream, peer, broker, None).instrument(span));
                    continue;
                };
                let limit = Duration::from_millis(broker.config.kafka.frame_timeout_ms);
                let task = async move {
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let id = crate::identity::of(&tls);
                            run(tls, peer, broker, id).await
                        }
                        Ok(Err(e)) => info!(cause = %e, "tls handshake failed, closing"),
                        Err(_) => info!(?limit, "tls handshake timed out, closing"),
                    }
                };
                tokio::spawn(task.instrument(span));
            }
            Err(e) => {
                warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// `identity`: the user a verified client certificate names (mutual TLS), for `acl`.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    broker: Arc<Broker>,
    identity: Option<String>,
) {
    let k = &broker.config.kafka;
    let mut conn = Connection::new(
        stream,
        k.max_frame_bytes as usize,
        Duration::from_millis(k.frame_timeout_ms),
        Duration::from_millis(k.idle_timeout_ms),
    );
    static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut who = Peer {
        id: NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        host: peer.ip().to_string(),
        sasl: Sasl::new(k.sasl.is_some()),
        identity,
        grants: None,
    };
    debug!("connection opened");
    let _open = crate::metrics::Open::kafka();
    loop {
        let body = match conn.read_frame().await {
            Ok(Some(b)) => b,
            Ok(None) => {
                debug!("connection closed by client");
                return;
            }
            Err(connection::Error::Io(e)) => {
                debug!(cause = %e, "connection error");
                return;
            }
            Err(e) => {
                info!(cause = %e, "closing connection");
                return;
            }
        };
        match api::handle(&broker, &mut who, body).await {
            Ok(Some(resp)) => {
                if let Err(e) = conn.write_frame(&resp.frame).await {
                    debug!(cause = %e, "write failed");
                    return;
                }
                if resp.close {
                    info!("closing connection after a failed sasl exchange");
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                info!(cause = %e, "closing connection after bad request");
                return;
            }
        }
    }
}
