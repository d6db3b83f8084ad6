//! FindCoordinator: this broker coordinates every group (v0-3 one key, v4 a list).

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use super::errors;
use crate::acl::Grants;
use crate::broker::{Broker, NODE_ID};
use kafka_protocol::protocol::StrBytes;

const GROUP: i8 = 0;

pub(super) fn handle(
    broker: &Broker,
    grants: &Grants,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut r = FindCoordinatorResponse::default();
    let host = StrBytes::from_string(broker.node.host.clone());
    let code = if req.key_type == GROUP {
        errors::NONE
    } else {
        errors::COORDINATOR_NOT_AVAILABLE
    };
    if version >= 4 {
        for key in req.coordinator_keys {
            let mut c = Coordinator::default();
            c.key = key;
            c.node_id = BrokerId(NODE_ID);
            c.host = host.clone();
            c.port = broker.node.port;
            c.error_code = match code {
                errors::NONE if !grants.may_group(c.key.as_str()) => {
                    errors::GROUP_AUTHORIZATION_FAILED
                }
                code => code,
            };
            r.coordinators.push(c);
        }
    } else {
        r.error_code = match code {
            errors::NONE if !grants.may_group(req.key.as_str()) => {
                errors::GROUP_AUTHORIZATION_FAILED
            }
            code => code,
        };
        r.node_id = BrokerId(NODE_ID);
        r.host = host;
        r.port = broker.node.port;
    }
    r
}
