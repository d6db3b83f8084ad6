//! SaslHandshake (v0-1): picks the mechanism. Served only when `kafka.sasl` is set.

use kafka_protocol::messages::{ResponseKind, SaslHandshakeRequest, SaslHandshakeResponse};
use kafka_protocol::protocol::StrBytes;

use super::sasl::Sasl;
use super::{errors, Reply};
use crate::config::SaslConfig;

/// Moves `state` on; an unsupported mechanism or a handshake out of turn is answered
/// and the connection closed, as Kafka does.
pub(super) fn handle(
    cfg: &SaslConfig,
    state: &mut Sasl,
    req: SaslHandshakeRequest,
    version: i16,
) -> Reply {
    let mut r = SaslHandshakeResponse::default();
    r.mechanisms = cfg
        .mechanisms
        .iter()
        .map(|m| StrBytes::from_string(m.clone()))
        .collect();
    if *state != Sasl::Start {
        r.error_code = errors::ILLEGAL_SASL_STATE;
        return Reply::last(ResponseKind::SaslHandshake(r));
    }
    if !cfg.mechanisms.iter().any(|m| m == req.mechanism.as_str()) {
        tracing::info!(mechanism = %req.mechanism.as_str(), "unsupported sasl mechanism");
        r.error_code = errors::UNSUPPORTED_SASL_MECHANISM;
        return Reply::last(ResponseKind::SaslHandshake(r));
    }
    *state = if version == 0 {
        Sasl::AwaitRawToken
    } else {
        Sasl::AwaitAuthenticate
    };
    Reply::message(ResponseKind::SaslHandshake(r))
}
