//! The embedded rumqttd broker: its router thread plus one listener per MQTT version
//! (rumqttd's v5 listener refuses 3.1.1 clients), each decoding through [`Ingest`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttd::protocol::{v4::V4, v5::V5, Protocol};
use rumqttd::{ConnectionSettings, LinkType, RouterConfig, Server, ServerSettings, TlsConfig};

use crate::config::MqttConfig;
use crate::ingest::{Ingest, IngestCtx};

/// Errors starting the MQTT side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not bind or probe a listener.
    #[error("mqtt listener {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Bound listener addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bound {
    /// MQTT 3.1.1.
    pub v4: Option<SocketAddr>,
    /// MQTT 5.
    pub v5: Option<SocketAddr>,
}

fn settings(name: &str, listen: SocketAddr, cfg: &MqttConfig) -> ServerSettings {
    ServerSettings {
        name: name.to_owned(),
        listen,
        tls: cfg.tls.as_ref().map(|t| TlsConfig::Rustls {
            capath: t.ca.as_ref().map(|p| p.display().to_string()),
            certpath: t.cert.display().to_string(),
            keypath: t.key.display().to_string(),
        }),
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: cfg.connect_timeout_ms,
            max_payload_size: cfg.max_payload_bytes,
            max_inflight_count: cfg.max_inflight,
            auth: (!cfg.credentials.is_empty()).then(|| {
                cfg.credentials
                    .clone()
                    .into_iter()
                    .collect::<HashMap<_, _>>()
            }),
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

/// Resolves port 0 to a concrete free port (rumqttd binds by address itself).
fn concrete(addr: SocketAddr) -> Result<SocketAddr, Error> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let l = std::net::TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?;
    l.local_addr()
        .map_err(|source| Error::Listen { addr, source })
}

async fn serve<P: Protocol + Clone + Send + 'static>(mut server: Server<P>, name: &'static str) {
    if let Err(e) = server.start(LinkType::Remote).await {
        tracing::error!(listener = name, cause = %e, "mqtt listener stopped");
    }
}

/// Waits until `addr` accepts connections.
async fn ready(addr: SocketAddr) -> Result<(), Error> {
    let mut last = None;
    for _ in 0..200 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(Error::Listen {
        addr,
        source: last.unwrap_or_else(|| std::io::Error::other("not ready")),
    })
}

/// Starts the router and the listeners; returns once they accept connections.
pub async fn start(cfg: &MqttConfig, ctx: Arc<IngestCtx>) -> Result<Bound, Error> {
    let router = rumqttd::Router::new(
        0,
        RouterConfig {
            max_connections: cfg.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: cfg.router_segment_bytes,
            max_segment_count: cfg.router_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
    );
    let router_tx = router.spawn();
    let mut bound = Bound::default();
    if let Some(addr) = cfg.v4_listen {
        let addr = concrete(addr)?;
        let server = Server::new(
            settings("v4", addr, cfg),
            router_tx.clone(),
            Ingest::new(V4, ctx.clone()),
        );
        tokio::spawn(serve(server, "v4"));
        ready(addr).await?;
        bound.v4 = Some(addr);
    }
    if let Some(addr) = cfg.v5_listen {
        let addr = concrete(addr)?;
        let server = Server::new(
            settings("v5", addr, cfg),
            router_tx.clone(),
            Ingest::new(V5, ctx.clone()),
        );
        tokio::spawn(serve(server, "v5"));
        ready(addr).await?;
        bound.v5 = Some(addr);
    }
    Ok(bound)
}
