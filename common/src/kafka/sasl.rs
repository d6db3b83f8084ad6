//! SASL for the client: PLAIN (RFC 4616) and SCRAM-SHA-256/512 ([`super::scram`]) over a
//! connection (SaslHandshake v1, then SaslAuthenticate: one round for PLAIN, two for
//! SCRAM), after ApiVersions as Kafka requires.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;

use super::scram::{Scram, ScramClient};
use super::{conn::Connection, Error};

/// Kafka's SASL_AUTHENTICATION_FAILED.
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// A SASL mechanism the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `PLAIN`.
    Plain,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    Scram(Scram),
}

impl Mechanism {
    /// The mechanism for a SASL name.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            _ => Scram::from_name(name).map(Mechanism::Scram),
        }
    }

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(s) => s.name(),
        }
    }
}

/// SASL credentials and the mechanism to present them with.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// Authentication identity.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
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

impl Credentials {
    /// Authenticates `conn` (which has negotiated API versions).
    pub async fn authenticate(&self, conn: &Connection) -> Result<(), Error> {
        let fail = |reason: String| {
            Error::Auth(format!(
                "as {:?} ({}): {reason}",
                self.username,
                self.mechanism.name()
            ))
        };
        if conn.version_for(ApiKey::SaslAuthenticate).is_err() {
            return Err(fail(
                "the broker does not offer SaslAuthenticate (SASL not enabled on this listener?)"
                    .into(),
            ));
        }
        let name = self.mechanism.name();
        let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(name));
        let resp = conn.send_versioned(&hs, 1).await?.wait().await?;
        if resp.error_code != 0 {
            let offered: Vec<&str> = resp.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(fail(format!(
                "mechanism {name} refused (error {}); broker offers {offered:?}",
                resp.error_code
            )));
        }
        let round = |bytes: Bytes| async move {
            let req = SaslAuthenticateRequest::default().with_auth_bytes(bytes);
            let resp = conn.send(&req).await?.wait().await?;
            if resp.error_code != 0 {
                let msg = (resp.error_message.as_ref()).map_or("no message", |m| m.as_str());
                return Err(fail(format!("error {}: {msg}", resp.error_code)));
            }
            Ok(resp.auth_bytes)
        };
        match self.mechanism {
            Mechanism::Plain => {
                round(plain_token(&self.username, &self.password)).await?;
            }
            Mechanism::Scram(m) => {
                let mut c = ScramClient::new(m, &self.username, &self.password);
                let server_first = round(Bytes::from(c.first())).await?;
                let last = c.finish(&server_first).map_err(|e| fail(e.to_string()))?;
                let server_final = round(Bytes::from(last)).await?;
                c.verify(&server_final).map_err(|e| fail(e.to_string()))?;
            }
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
            Credentials {
                mechanism: Mechanism::Plain,
                username: "u".into(),
                password: "secret".into()
            }
        );
        assert!(!dbg.contains("secret"), "{dbg}");
    }
}
