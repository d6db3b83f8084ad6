//! SyncGroup: the leader's assignment is handed to every member; in a shared group
//! (`$shared/<name>`) every member gets every partition of its topics instead.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use crate::acl::Grants;
use crate::broker::Broker;
use crate::groups::shared;

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: SyncGroupRequest,
    _version: i16,
) -> SyncGroupResponse {
    let group = req.group_id.0.as_str();
    if !grants.may_group(group) {
        let mut r = SyncGroupResponse::default();
        r.error_code = super::errors::GROUP_AUTHORIZATION_FAILED;
        return r;
    }
    let assignments = if shared::is_shared(group) && !req.assignments.is_empty() {
        // Only the leader sends assignments: replace them all. Nothing at all while
        // members hold unacknowledged batches (`shared.rs`, step 5).
        let revoke = broker.groups.shares.revoke_first(group);
        broker
            .groups
            .shared_members(group)
            .into_iter()
            .map(|(member, topics)| {
                if revoke {
                    return (member, shared::assignment(&[]));
                }
                let parts: Vec<(String, u32)> = topics
                    .into_iter()
                    .filter_map(|t| {
                        let n = broker.log.get(&t)?.partition_count();
                        Some((t, n))
                    })
                    .collect();
                (member, shared::assignment(&parts))
            })
            .collect()
    } else {
        req.assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect()
    };
    let res = broker
        .groups
        .sync(
            group,
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
