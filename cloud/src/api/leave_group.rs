//! LeaveGroup: one member (v0-2) or a list of members (v3+).

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::errors;
use crate::acl::Grants;
use crate::broker::Broker;

pub(super) fn handle(
    broker: &Broker,
    grants: &Grants,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = req.group_id.0.as_str();
    let mut r = LeaveGroupResponse::default();
    if !grants.may_group(group) {
        r.error_code = errors::GROUP_AUTHORIZATION_FAILED;
        return r;
    }
    if version < 3 {
        r.error_code = broker.groups.leave(group, req.member_id.as_str());
        return r;
    }
    for m in req.members {
        let mut out = MemberResponse::default();
        out.error_code = broker.groups.leave(group, m.member_id.as_str());
        out.member_id = m.member_id;
        out.group_instance_id = m.group_instance_id;
        r.members.push(out);
    }
    r
}
