//! ListGroups: live groups and groups known only by committed offsets.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use crate::acl::Grants;
use crate::broker::Broker;

/// Under `acl`, only the groups the client may use are listed (as Kafka lists those it
/// may describe).
pub(super) fn handle(
    broker: &Broker,
    grants: &Grants,
    req: ListGroupsRequest,
    _version: i16,
) -> ListGroupsResponse {
    let mut r = ListGroupsResponse::default();
    match broker.groups.list() {
        Ok(groups) => {
            for (name, protocol_type, state) in groups {
                if !grants.may_group(&name) {
                    continue;
                }
                if !req.states_filter.is_empty()
                    && !req
                        .states_filter
                        .iter()
                        .any(|s| s.as_str().eq_ignore_ascii_case(state))
                {
                    continue;
                }
                let mut g = ListedGroup::default();
                g.group_id = GroupId(StrBytes::from_string(name));
                g.protocol_type = StrBytes::from_string(protocol_type);
                g.group_state = StrBytes::from_static_str(state);
                g.group_type = StrBytes::from_static_str("classic");
                r.groups.push(g);
            }
        }
        Err(_) => r.error_code = errors::KAFKA_STORAGE_ERROR,
    }
    r
}
