//! TLS (rustls 0.22, the version rumqttd already pulls in) shared by every listener and
//! by the uplink: PEM loading, server configs (optionally requiring client certificates,
//! i.e. mutual TLS) and client configs (optionally presenting a certificate).
//!
//! Everything here reads files and builds configs; no sockets. Errors name the file and
//! the reason; callers add the config key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Certificate bundles of common Linux distributions, tried in order when no CA file is
/// configured for a client (Debian/Ubuntu/Alpine/Arch, Fedora/RHEL, openSUSE).
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
];

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or is not PEM.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O or PEM error.
        source: std::io::Error,
    },
    /// A PEM file holds no item of the expected kind.
    #[error("{path}: no {what} found")]
    Missing {
        /// The file.
        path: String,
        /// What was expected ("certificate", "private key").
        what: &'static str,
    },
    /// No CA file was given and no system bundle exists.
    #[error("no CA file configured and no system bundle found (tried {})", SYSTEM_CA_BUNDLES.join(", "))]
    NoSystemRoots,
    /// rustls refused the certificates or key (e.g. key does not match the certificate).
    #[error("invalid certificate or key: {0}")]
    Rustls(String),
    /// The name to verify the server's certificate against is not a DNS name or IP.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// Which configured input a [`TlsError`] is about (`cert`, `key`, `ca`, `client_ca`,
/// `server_name`), so callers can name the config key.
pub type Field = &'static str;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::Missing {
            path: path.display().to_string(),
            what: "private key",
        })
}

/// A root store of every certificate in a PEM file; `None` means the system bundle.
pub fn load_roots(path: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let path: PathBuf = match path {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or(TlsError::NoSystemRoots)?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(load_certs(&path)?);
    if added == 0 {
        return Err(TlsError::Missing {
            path: path.display().to_string(),
            what: "usable CA certificate",
        });
    }
    Ok(roots)
}

/// A TLS acceptor for a listener: certificate chain and key, and, with `client_ca`,
/// client certificates required and verified against that CA (mutual TLS). The error
/// says which input failed: `cert`, `key` or `client_ca`.
pub fn acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<tokio_rustls::TlsAcceptor, (Field, TlsError)> {
    let certs = load_certs(cert).map_err(|e| ("cert", e))?;
    let key = load_key(key).map_err(|e| ("key", e))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = load_roots(Some(ca)).map_err(|e| ("client_ca", e))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| ("client_ca", TlsError::Rustls(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ("key", TlsError::Rustls(e.to_string())))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Client-side TLS settings (files are read by [`ClientTls::connector`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA bundle to verify the server; `None`: the system bundle.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key (mutual TLS).
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// Name to verify the server certificate against, instead of the dialled host.
    pub server_name: Option<String>,
}

/// A ready TLS client: the rustls config and the optional server name override.
#[derive(Clone)]
pub struct Connector {
    inner: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the files and builds the client; the error says which field failed.
    pub fn connector(&self) -> Result<Connector, (Field, TlsError)> {
        let roots = load_roots(self.ca.as_deref()).map_err(|e| ("ca", e))?;
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match &self.cert_key {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let certs = load_certs(cert).map_err(|e| ("cert", e))?;
                let key = load_key(key).map_err(|e| ("key", e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| ("key", TlsError::Rustls(e.to_string())))?
            }
        };
        let server_name = match &self.server_name {
            None => None,
            Some(n) => Some(server_name(n).map_err(|e| ("server_name", e))?),
        };
        Ok(Connector {
            inner: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// Parses a DNS name or IP address to verify a certificate against.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}

impl Connector {
    /// Runs the TLS handshake over `stream`, verifying the certificate against the
    /// configured server name or else `host`.
    pub async fn connect<S>(
        &self,
        host: &str,
        stream: S,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => server_name(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        };
        self.inner.connect(name, stream).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let e = load_certs(Path::new("/nonexistent/cert.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = load_certs(&empty).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Missing {
                    what: "certificate",
                    ..
                }
            ),
            "{e}"
        );
        let e = load_key(&empty).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Missing {
                    what: "private key",
                    ..
                }
            ),
            "{e}"
        );
        let c = ClientTls {
            ca: Some(empty.clone()),
            ..Default::default()
        };
        assert_eq!(c.connector().unwrap_err().0, "ca");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_names() {
        assert!(server_name("localhost").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("bad name!").is_err());
    }
}
