//! SyncGroup: the leader's assignment is handed to every member.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;

pub(super) async fn handle(
    broker: &Broker,
    req: SyncGroupRequest,
    _version: i16,
) -> SyncGroupResponse {
    let assignments = req
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let res = broker
        .groups
        .sync(
            req.group_id.0.as_str(),
            req.member_id.as_str(),
            req.generation_id,
            assignments,
        )
        .await;
    let mut r = SyncGroupResponse::default();
    r.error_code = res.error;
    r.protocol_type = res.protocol_type.map(StrBytes::from_string);
    r.protocol_name = res.protocol.map(StrBytes::from_string);
    r.assignment = res.assignment;
    r
}
