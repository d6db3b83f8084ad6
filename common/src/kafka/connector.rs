//! Opening a connection with the listener's security: TCP, then TLS (optional, with a
//! client certificate for mutual TLS), then ApiVersions, then SASL (PLAIN or SCRAM, optional).
//! The four Kafka security protocols follow: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL.

use std::time::Duration;

use super::{conn::Connection, sasl::Credentials, Error};
use crate::tls;

/// How to reach brokers; cheap to clone, shared by every connection of a client.
#[derive(Debug, Clone)]
pub struct Connector {
    /// Kafka client id sent in every request header.
    pub client_id: String,
    /// TLS, if the listener speaks it.
    pub tls: Option<tls::Connector>,
    /// SASL credentials, if the listener requires them.
    pub sasl: Option<Credentials>,
    /// Limit for TCP connect, the TLS handshake, ApiVersions and SASL together.
    pub connect_timeout: Duration,
}

impl Connector {
    /// Plain TCP, no authentication.
    pub fn plaintext(client_id: &str) -> Self {
        Connector {
            client_id: client_id.to_owned(),
            tls: None,
            sasl: None,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Connects to `addr` (`host:port`), negotiates versions and authenticates, all within
    /// `connect_timeout` (a link that goes half-open during the handshake fails the
    /// attempt instead of hanging it).
    pub async fn connect(&self, addr: &str) -> Result<Connection, Error> {
        tokio::time::timeout(self.connect_timeout, self.establish(addr))
            .await
            .map_err(|_| {
                Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connecting to {addr} (TCP, TLS, ApiVersions, SASL) took longer than {:?}",
                        self.connect_timeout
                    ),
                ))
            })?
    }

    async fn establish(&self, addr: &str) -> Result<Connection, Error> {
        let stream = self.open(addr).await?;
        let conn = Connection::handshake(stream, &self.client_id)
            .await
            .map_err(|e| match (&self.tls, e) {
                // A TLS alert from the server (e.g. our certificate was refused) surfaces
                // on the first read, after the handshake looked complete on our side.
                (Some(_), Error::Closed(why)) => Error::Tls(format!(
                    "{addr}: connection closed after the handshake: {why}"
                )),
                (_, e) => e,
            })?;
        if let Some(p) = &self.sasl {
            p.authenticate(&conn).await?;
        }
        Ok(conn)
    }

    async fn open(&self, addr: &str) -> Result<Box<dyn super::conn::Stream>, Error> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let host = crate::net::host_of(addr);
        let s = tls
            .connect(host, tcp)
            .await
            .map_err(|e| Error::Tls(format!("handshake with {addr} failed: {e}")))?;
        Ok(Box::new(s))
    }
}
