//! SASL/PLAIN (RFC 4616) for the client: the token and the exchange over a connection
//! (SaslHandshake v1, then SaslAuthenticate), after ApiVersions as Kafka requires.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;

use super::{conn::Connection, Error};

/// Kafka's SASL_AUTHENTICATION_FAILED.
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// SASL/PLAIN credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Plain {
    /// Authentication identity.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plain")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// The PLAIN initial response: `authzid NUL authcid NUL password`, authzid empty.
pub fn plain_token(username: &str, password: &str) -> Bytes {
    let mut t = Vec::with_capacity(username.len() + password.len() + 2);
    t.push(0);
    t.extend_from_slice(username.as_bytes());
    t.push(0);
    t.extend_from_slice(password.as_bytes());
    Bytes::from(t)
}

impl Plain {
    /// Authenticates `conn` (which has negotiated API versions).
    pub async fn authenticate(&self, conn: &Connection) -> Result<(), Error> {
        let fail = |reason: String| Error::Auth(format!("as {:?}: {reason}", self.username));
        if conn.version_for(ApiKey::SaslAuthenticate).is_err() {
            return Err(fail(
                "the broker does not offer SaslAuthenticate (SASL not enabled on this listener?)"
                    .into(),
            ));
        }
        let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let resp = conn.send_versioned(&hs, 1).await?.wait().await?;
        if resp.error_code != 0 {
            let offered: Vec<&str> = resp.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(fail(format!(
                "mechanism PLAIN refused (error {}); broker offers {offered:?}",
                resp.error_code
            )));
        }
        let req = SaslAuthenticateRequest::default()
            .with_auth_bytes(plain_token(&self.username, &self.password));
        let resp = conn.send(&req).await?.wait().await?;
        if resp.error_code != 0 {
            let msg = resp
                .error_message
                .as_ref()
                .map_or("no message", |m| m.as_str());
            return Err(fail(format!("error {}: {msg}", resp.error_code)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_layout() {
        assert_eq!(&plain_token("u", "p")[..], b"\0u\0p");
        let dbg = format!(
            "{:?}",
            Plain {
                username: "u".into(),
                password: "secret".into()
            }
        );
        assert!(!dbg.contains("secret"), "{dbg}");
    }
}
