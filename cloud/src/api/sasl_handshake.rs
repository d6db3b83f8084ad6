//! SaslHandshake (v0-1): picks the mechanism (SCRAM needs v1). Served only when
//! `kafka.sasl` is set.

use common::kafka::Mechanism;
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
    let mechanism = (cfg.mechanisms.iter())
        .find(|m| *m == req.mechanism.as_str())
        .and_then(|m| Mechanism::from_name(m));
    let mechanism = match (mechanism, version) {
        (Some(m), 1..) => m,
        // v0 sends one bare token: PLAIN's single round only.
        (Some(m @ Mechanism::Plain), 0) => m,
        _ => {
            tracing::info!(mechanism = %req.mechanism.as_str(), version, "unsupported sasl mechanism");
            r.error_code = errors::UNSUPPORTED_SASL_MECHANISM;
            return Reply::last(ResponseKind::SaslHandshake(r));
        }
    };
    *state = if version == 0 {
        Sasl::AwaitRawToken
    } else {
        Sasl::AwaitAuthenticate(mechanism)
    };
    Reply::message(ResponseKind::SaslHandshake(r))
}
