//! SaslAuthenticate (v0-2): carries the PLAIN token, or SCRAM's two client messages,
//! after a SaslHandshake v1.

use bytes::Bytes;
use common::kafka::scram::ScramServer;
use common::kafka::Mechanism;
use kafka_protocol::messages::{ResponseKind, SaslAuthenticateRequest, SaslAuthenticateResponse};
use kafka_protocol::protocol::StrBytes;

use super::sasl::{verify_plain, Sasl};
use super::{errors, Reply};
use crate::config::SaslConfig;

/// Kafka's message for a failed PLAIN authentication (the reason is only logged).
pub(super) const FAILED: &str = "Authentication failed: Invalid username or password";

/// Kafka's message for a failed SCRAM authentication.
const SCRAM_FAILED: &str =
    "Authentication failed during authentication due to invalid credentials with SASL mechanism";

/// Verifies the token (or takes SCRAM's next step); a failure is answered with error 58
/// and the connection closed.
pub(super) fn handle(cfg: &SaslConfig, state: &mut Sasl, req: SaslAuthenticateRequest) -> Reply {
    let mut r = SaslAuthenticateResponse::default();
    r.auth_bytes = Bytes::new();
    r.error_message = None;
    let outcome = match std::mem::replace(state, Sasl::Start) {
        Sasl::AwaitAuthenticate(Mechanism::Plain) => verify_plain(&cfg.users, &req.auth_bytes)
            .map(Sasl::Done)
            .map_err(|e| (e.to_string(), FAILED)),
        Sasl::AwaitAuthenticate(Mechanism::Scram(m)) => {
            ScramServer::start(m, &req.auth_bytes, |u| cfg.users.get(u).cloned())
                .map(|(server, first)| {
                    r.auth_bytes = Bytes::from(first);
                    Sasl::ScramFinal(Box::new(server))
                })
                .map_err(|e| (e.to_string(), SCRAM_FAILED))
        }
        Sasl::ScramFinal(server) => server
            .finish(&req.auth_bytes)
            .map(|(user, last)| {
                r.auth_bytes = Bytes::from(last);
                Sasl::Done(user)
            })
            .map_err(|e| (e.to_string(), SCRAM_FAILED)),
        other => {
            *state = other;
            r.error_code = errors::ILLEGAL_SASL_STATE;
            r.error_message = Some(StrBytes::from_static_str(
                "SaslAuthenticate before a SaslHandshake v1",
            ));
            return Reply::last(ResponseKind::SaslAuthenticate(r));
        }
    };
    match outcome {
        Ok(next) => {
            if let Sasl::Done(user) = &next {
                tracing::debug!(%user, "sasl authenticated");
            }
            *state = next;
            Reply::message(ResponseKind::SaslAuthenticate(r))
        }
        Err((cause, message)) => {
            tracing::info!(%cause, "sasl authentication failed");
            r.auth_bytes = Bytes::new();
            r.error_code = errors::SASL_AUTHENTICATION_FAILED;
            r.error_message = Some(StrBytes::from_static_str(message));
            Reply::last(ResponseKind::SaslAuthenticate(r))
        }
    }
}
