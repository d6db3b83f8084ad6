//! CreatePartitions: raises a topic's partition count.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use crate::acl::{Grants, Op};
use crate::broker::Broker;

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut r = CreatePartitionsResponse::default();
    for t in req.topics {
        let mut res = CreatePartitionsTopicResult::default();
        res.name = t.name.clone();
        if !grants.may_kafka(Op::Admin, t.name.0.as_str()) {
            res.error_code = errors::TOPIC_AUTHORIZATION_FAILED;
            res.error_message = Some(StrBytes::from_static_str(errors::NOT_ALLOWED));
            r.results.push(res);
            continue;
        }
        let outcome = if t.count <= 0 {
            Err(crate::log::TopicError::InvalidPartitions(format!(
                "{} is not a valid partition count",
                t.count
            )))
        } else {
            broker
                .log
                .add_partitions(t.name.0.as_str(), t.count as u32, req.validate_only)
                .await
        };
        if let Err(e) = outcome {
            res.error_code = errors::topic_error(&e);
            res.error_message = Some(StrBytes::from_string(e.to_string()));
        }
        r.results.push(res);
    }
    r
}
