//! DescribeGroups: state, protocol and members of each group.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use crate::acl::Grants;
use crate::broker::Broker;

pub(super) fn handle(
    broker: &Broker,
    grants: &Grants,
    req: DescribeGroupsRequest,
    _version: i16,
) -> DescribeGroupsResponse {
    let mut r = DescribeGroupsResponse::default();
    for id in req.groups {
        let mut g = DescribedGroup::default();
        if !grants.may_group(id.0.as_str()) {
            g.error_code = errors::GROUP_AUTHORIZATION_FAILED;
            g.group_id = id;
            g.authorized_operations = i32::MIN;
            r.groups.push(g);
            continue;
        }
        match broker.groups.describe(id.0.as_str()) {
            Some(view) => {
                g.group_state = StrBytes::from_static_str(view.state);
                g.protocol_type = StrBytes::from_string(view.protocol_type);
                g.protocol_data = StrBytes::from_string(view.protocol);
                g.members = view
                    .members
                    .into_iter()
                    .map(|(id, instance, client, host, meta, assignment)| {
                        let mut m = DescribedGroupMember::default();
                        m.member_id = StrBytes::from_string(id);
                        m.group_instance_id = instance.map(StrBytes::from_string);
                        m.client_id = StrBytes::from_string(client);
                        m.client_host = StrBytes::from_string(host);
                        m.member_metadata = meta;
                        m.member_assignment = assignment;
                        m
                    })
                    .collect();
            }
            None => g.group_state = StrBytes::from_static_str("Dead"),
        }
        g.group_id = id;
        g.authorized_operations = i32::MIN;
        r.groups.push(g);
    }
    r
}
