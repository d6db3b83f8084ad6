//! The Kafka listener: accepts connections and runs one task per connection, with a
//! tracing span carrying the peer. Requests on a connection are answered in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn, Instrument};

use crate::api::{self, Peer};
use crate::broker::Broker;
use crate::connection::{self, Connection};

pub(crate) async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let broker = broker.clone();
                let span = tracing::info_span!("kafka", %peer);
                tokio::spawn(async move { run(stream, peer, broker).await }.instrument(span));
            }
            Err(e) => {
                warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn run(stream: TcpStream, peer: SocketAddr, broker: Arc<Broker>) {
    let _ = stream.set_nodelay(true);
    let k = &broker.config.kafka;
    let mut conn = Connection::new(
        stream,
        k.max_frame_bytes as usize,
        Duration::from_millis(k.frame_timeout_ms),
        Duration::from_millis(k.idle_timeout_ms),
    );
    let who = Peer {
        host: peer.ip().to_string(),
    };
    debug!("connection opened");
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
        match api::handle(&broker, &who, body).await {
            Ok(Some(resp)) => {
                if let Err(e) = conn.write_frame(&resp.head, resp.tail.as_deref()).await {
                    debug!(cause = %e, "write failed");
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
