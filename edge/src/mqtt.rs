//! The embedded rumqttd broker: its router thread plus one listener per MQTT version
//! (rumqttd's v5 listener refuses 3.1.1 clients), each decoding through [`Ingest`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttd::protocol::{v4::V4, v5::V5, Protocol};
use rumqttd::{ConnectionSettings, LinkType, RouterConfig, Server, ServerSettings, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    /// The router refused the downlink's local link.
    #[error("local link for the downlink: {0}")]
    Link(String),
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

/// Waits until the listener at `addr` answers. A plain listener is probed with an MQTT
/// CONNECT (version 4 or 5) answered by a CONNACK, then closed, which rumqttd logs at info
/// level only (a bare TCP connect closed before CONNECT makes it log an ERROR per probe).
/// A TLS listener is probed by a TCP connect. With `mqtt.credentials` set the probe logs
/// in with the first pair (rumqttd drops a CONNECT without them, with an ERROR line).
async fn ready(
    addr: SocketAddr,
    level: Option<u8>,
    login: Option<(&str, &str)>,
) -> Result<(), Error> {
    let mut last = None;
    for _ in 0..200 {
        let probe = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            if let Some(level) = level {
                s.write_all(&probe_connect(level, login)).await?;
                // Read the whole CONNACK (remaining length < 128), so the close is a FIN
                // and not a reset for unread bytes.
                let mut head = [0u8; 2];
                s.read_exact(&mut head).await?;
                if head[0] != 0x20 || head[1] & 0x80 != 0 {
                    return Err(std::io::Error::other("no CONNACK"));
                }
                s.read_exact(&mut vec![0u8; head[1] as usize]).await?;
                s.shutdown().await?;
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(std::io::Error::other("probe timed out")),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(Error::Listen {
        addr,
        source: last.unwrap_or_else(|| std::io::Error::other("not ready")),
    })
}

/// CONNECT, clean session, keepalive 10 s, client id `edge-ready-probe`, for protocol
/// level 4 (3.1.1) or 5 (with an empty property list), with user name and password when
/// `login` is given.
fn probe_connect(level: u8, login: Option<(&str, &str)>) -> Vec<u8> {
    let field = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    };
    let flags = if login.is_some() { 0xC2 } else { 0x02 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 10];
    if level == 5 {
        body.push(0);
    }
    field(&mut body, b"edge-ready-probe");
    if let Some((user, password)) = login {
        field(&mut body, user.as_bytes());
        field(&mut body, password.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// The downlink's local link into the router (publishes only).
pub type LocalLink = (rumqttd::local::LinkTx, rumqttd::local::LinkRx);

/// Starts the router and the listeners; returns once they accept connections, with a
/// local link for the downlink if `downlink` (made before any device connects, so its
/// router connection id is never one a device's reconnect reuses: `takeover.rs`).
/// Blocks a worker thread while the router registers the link (multi-thread runtime).
pub async fn start(
    cfg: &MqttConfig,
    ctx: Arc<IngestCtx>,
    downlink: bool,
) -> Result<(Bound, Option<LocalLink>), Error> {
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
    let link = if downlink {
        let builder =
            rumqttd::local::LinkBuilder::new(crate::downlink::LOCAL_CLIENT_ID, router_tx.clone());
        let (tx, rx, _) = tokio::task::block_in_place(|| {
            builder.build().map_err(|e| Error::Link(e.to_string()))
        })?;
        Some((tx, rx))
    } else {
        None
    };
    let login = cfg
        .credentials
        .iter()
        .next()
        .map(|(u, p)| (u.as_str(), p.as_str()));
    let mut bound = Bound::default();
    if let Some(addr) = cfg.v4_listen {
        let addr = concrete(addr)?;
        let server = Server::new(
            settings("v4", addr, cfg),
            router_tx.clone(),
            Ingest::new(V4, ctx.clone()),
        );
        tokio::spawn(serve(server, "v4"));
        ready(addr, cfg.tls.is_none().then_some(4), login).await?;
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
        ready(addr, cfg.tls.is_none().then_some(5), login).await?;
        bound.v5 = Some(addr);
    }
    Ok((bound, link))
}
