//! SaslAuthenticate (v0-2): carries the PLAIN token after a SaslHandshake v1.

use bytes::Bytes;
use kafka_protocol::messages::{ResponseKind, SaslAuthenticateRequest, SaslAuthenticateResponse};
use kafka_protocol::protocol::StrBytes;

use super::sasl::{verify_plain, Sasl};
use super::{errors, Reply};
use crate::config::SaslConfig;

/// Kafka's message for a failed PLAIN authentication (the reason is only logged).
pub(super) const FAILED: &str = "Authentication failed: Invalid username or password";

/// Verifies the token; a failure is answered with error 58 and the connection closed.
pub(super) fn handle(cfg: &SaslConfig, state: &mut Sasl, req: SaslAuthenticateRequest) -> Reply {
    let mut r = SaslAuthenticateResponse::default();
    r.auth_bytes = Bytes::new();
    r.error_message = None;
    if *state != Sasl::AwaitAuthenticate {
        r.error_code = errors::ILLEGAL_SASL_STATE;
        r.error_message = Some(StrBytes::from_static_str(
            "SaslAuthenticate before a SaslHandshake v1",
        ));
        return Reply::last(ResponseKind::SaslAuthenticate(r));
    }
    match verify_plain(&cfg.users, &req.auth_bytes) {
        Ok(user) => {
            tracing::debug!(%user, "sasl authenticated");
            *state = Sasl::Done(user);
            Reply::message(ResponseKind::SaslAuthenticate(r))
        }
        Err(e) => {
            tracing::info!(cause = %e, "sasl authentication failed");
            r.error_code = errors::SASL_AUTHENTICATION_FAILED;
            r.error_message = Some(StrBytes::from_static_str(FAILED));
            Reply::last(ResponseKind::SaslAuthenticate(r))
        }
    }
}
