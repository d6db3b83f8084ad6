//! SASL on the Kafka listener: the per-connection authentication state (no I/O) and
//! SASL/PLAIN (RFC 4616) verification; SCRAM's exchange is `common::kafka::scram`. The API handlers are `sasl_handshake` and
//! `sasl_authenticate`; the gate in `api::handle` consults [`Sasl::admits`].
//!
//! As in Kafka: before authentication only ApiVersions, SaslHandshake and
//! SaslAuthenticate are served, anything else closes the connection; a failed
//! authentication is answered (SaslAuthenticate error 58) and the connection closed.
//! SaslHandshake v0 is followed by the token as a bare length-prefixed frame and an
//! empty frame as the answer (Kafka's pre-KIP-152 framing); SCRAM needs SaslHandshake v1
//! (its two rounds travel in SaslAuthenticate), which every client that speaks SCRAM
//! sends.

use std::collections::BTreeMap;

use common::kafka::scram::ScramServer;
use common::kafka::Mechanism;
use common::secret::constant_time_eq;
use kafka_protocol::messages::ApiKey;

/// Where a connection is in the SASL exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sasl {
    /// The listener has no SASL: everything is served.
    Off,
    /// No handshake yet.
    Start,
    /// SaslHandshake v0 done: the next frame is a bare token.
    AwaitRawToken,
    /// SaslHandshake v1 done: the next request must be SaslAuthenticate.
    AwaitAuthenticate(Mechanism),
    /// SCRAM's first round done: the next SaslAuthenticate carries the client's proof.
    ScramFinal(Box<ScramServer>),
    /// Authenticated as this user.
    Done(String),
}

impl Sasl {
    pub(crate) fn new(enabled: bool) -> Self {
        if enabled {
            Sasl::Start
        } else {
            Sasl::Off
        }
    }

    /// Whether a request of `api_key` may be served now.
    pub(crate) fn admits(&self, api_key: i16) -> bool {
        match self {
            Sasl::Off | Sasl::Done(_) => true,
            Sasl::AwaitRawToken => false,
            Sasl::Start | Sasl::AwaitAuthenticate(_) | Sasl::ScramFinal(_) => [
                ApiKey::ApiVersions as i16,
                ApiKey::SaslHandshake as i16,
                ApiKey::SaslAuthenticate as i16,
            ]
            .contains(&api_key),
        }
    }
}

/// Why a PLAIN token was refused (logged; the client gets a generic message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlainError {
    #[error("malformed PLAIN token")]
    Malformed,
    #[error("authorization id {0:?} differs from the user")]
    Authzid(String),
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("wrong password for user {0:?}")]
    WrongPassword(String),
}

/// Checks `authzid NUL authcid NUL password` against `users`; returns the user.
pub(crate) fn verify_plain(
    users: &BTreeMap<String, String>,
    token: &[u8],
) -> Result<String, PlainError> {
    let mut parts = token.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed);
    };
    let user = std::str::from_utf8(user).map_err(|_| PlainError::Malformed)?;
    if user.is_empty() {
        return Err(PlainError::Malformed);
    }
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Err(PlainError::Authzid(
            String::from_utf8_lossy(authzid).into_owned(),
        ));
    }
    let Some(expected) = users.get(user) else {
        return Err(PlainError::UnknownUser(user.to_owned()));
    };
    if !constant_time_eq(expected.as_bytes(), pass) {
        return Err(PlainError::WrongPassword(user.to_owned()));
    }
    Ok(user.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> BTreeMap<String, String> {
        BTreeMap::from([("alice".to_owned(), "s3cret".to_owned())])
    }

    #[test]
    fn plain_tokens() {
        let u = users();
        assert_eq!(verify_plain(&u, b"\0alice\0s3cret"), Ok("alice".into()));
        assert_eq!(
            verify_plain(&u, b"alice\0alice\0s3cret"),
            Ok("alice".into())
        );
        assert_eq!(
            verify_plain(&u, b"\0alice\0s3cre"),
            Err(PlainError::WrongPassword("alice".into()))
        );
        assert_eq!(
            verify_plain(&u, b"\0alice\0s3cretX"),
            Err(PlainError::WrongPassword("alice".into()))
        );
        assert_eq!(
            verify_plain(&u, b"\0bob\0s3cret"),
            Err(PlainError::UnknownUser("bob".into()))
        );
        assert_eq!(
            verify_plain(&u, b"bob\0alice\0s3cret"),
            Err(PlainError::Authzid("bob".into()))
        );
        for bad in [&b""[..], b"\0alice", b"\0\0x", b"\0a\0b\0c", b"\0\xff\0x"] {
            assert_eq!(verify_plain(&u, bad), Err(PlainError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn gate() {
        let api = |k: ApiKey| k as i16;
        assert!(Sasl::Off.admits(api(ApiKey::Produce)));
        assert!(Sasl::Done("a".into()).admits(api(ApiKey::Fetch)));
        let s = Sasl::new(true);
        assert!(s.admits(api(ApiKey::ApiVersions)));
        assert!(s.admits(api(ApiKey::SaslHandshake)));
        assert!(!s.admits(api(ApiKey::Metadata)));
        assert!(!Sasl::AwaitAuthenticate(Mechanism::Plain).admits(api(ApiKey::Produce)));
        assert!(!Sasl::AwaitRawToken.admits(api(ApiKey::ApiVersions)));
    }
}
