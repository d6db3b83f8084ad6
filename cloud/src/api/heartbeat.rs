//! Heartbeat: keeps a member alive and tells it when a rebalance is under way.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::errors;
use crate::acl::Grants;
use crate::broker::Broker;

pub(super) fn handle(
    broker: &Broker,
    grants: &Grants,
    req: HeartbeatRequest,
    _version: i16,
) -> HeartbeatResponse {
    let mut r = HeartbeatResponse::default();
    if !grants.may_group(req.group_id.0.as_str()) {
        r.error_code = errors::GROUP_AUTHORIZATION_FAILED;
        return r;
    }
    r.error_code = broker.groups.heartbeat(
        req.group_id.0.as_str(),
        req.member_id.as_str(),
        req.generation_id,
    );
    r
}
