//! DescribeCluster: this one broker.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{Broker, NODE_ID};

pub(super) fn handle(
    broker: &Broker,
    _req: DescribeClusterRequest,
    _version: i16,
) -> DescribeClusterResponse {
    let mut r = DescribeClusterResponse::default();
    r.endpoint_type = 1;
    r.cluster_id = StrBytes::from_string(broker.cluster_id.clone());
    r.controller_id = BrokerId(NODE_ID);
    let mut b = DescribeClusterBroker::default();
    b.broker_id = BrokerId(NODE_ID);
    b.host = StrBytes::from_string(broker.node.host.clone());
    b.port = broker.node.port;
    r.brokers = vec![b];
    r.cluster_authorized_operations = i32::MIN;
    r
}
