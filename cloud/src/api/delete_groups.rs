//! DeleteGroups: removes empty groups and their committed offsets.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::errors;
use crate::acl::Grants;
use crate::broker::Broker;

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let mut r = DeleteGroupsResponse::default();
    for g in req.groups_names {
        let mut res = DeletableGroupResult::default();
        res.error_code = if grants.may_group(g.0.as_str()) {
            broker
                .groups
                .delete(g.0.as_str())
                .await
                .unwrap_or(errors::KAFKA_STORAGE_ERROR)
        } else {
            errors::GROUP_AUTHORIZATION_FAILED
        };
        res.group_id = g;
        r.results.push(res);
    }
    r
}
