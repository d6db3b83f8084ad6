//! JoinGroup: the answer is deferred until the group's join phase completes.

use std::time::Duration;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse, RequestHeader};
use kafka_protocol::protocol::StrBytes;

use crate::acl::Grants;
use crate::broker::Broker;
use crate::groups::group::JoinRequest;
use crate::groups::shared;

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: JoinGroupRequest,
    version: i16,
    h: &RequestHeader,
    host: &str,
) -> JoinGroupResponse {
    if !grants.may_group(req.group_id.0.as_str()) {
        let mut r = JoinGroupResponse::default();
        r.error_code = super::errors::GROUP_AUTHORIZATION_FAILED;
        r.generation_id = -1;
        r.protocol_name = Some(StrBytes::default());
        return r;
    }
    let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
    let rebalance = if version >= 1 {
        Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64)
    } else {
        session
    };
    let mut protocols: Vec<(String, bytes::Bytes)> = req
        .protocols
        .into_iter()
        .map(|p| (p.name.to_string(), p.metadata))
        .collect();
    if shared::is_shared(req.group_id.0.as_str())
        && protocols.iter().any(|(n, _)| n != shared::COOPERATIVE)
    {
        // A cooperative rebalance never revokes, so members would never restart from the
        // group's offset and receive what others handed back (`shared.rs`, step 5).
        protocols.retain(|(n, _)| n != shared::COOPERATIVE);
    }
    let jr = JoinRequest {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|s| s.to_string()),
        client_id: h
            .client_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        client_host: format!("/{host}"),
        session_timeout: session,
        rebalance_timeout: rebalance,
        protocol_type: req.protocol_type.to_string(),
        protocols,
        require_known_member_id: version >= 4,
    };
    let res = broker.groups.join(req.group_id.0.as_str(), jr).await;
    let mut r = JoinGroupResponse::default();
    r.error_code = res.error;
    r.generation_id = res.generation;
    r.protocol_type = res.protocol_type.map(StrBytes::from_string);
    r.protocol_name = Some(StrBytes::from_string(res.protocol.unwrap_or_default()));
    r.leader = StrBytes::from_string(res.leader);
    r.member_id = StrBytes::from_string(res.member_id);
    r.members = res
        .members
        .into_iter()
        .map(|(id, instance, meta)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = StrBytes::from_string(id);
            m.group_instance_id = instance.map(StrBytes::from_string);
            m.metadata = meta;
            m
        })
        .collect();
    r
}
