//! DeleteTopics: by name (all versions) or by topic id (v6).

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use crate::acl::{Grants, Op};
use crate::broker::Broker;

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let mut targets: Vec<(Option<TopicName>, uuid::Uuid)> = Vec::new();
    if version >= 6 {
        for t in req.topics {
            targets.push((t.name, t.topic_id));
        }
    } else {
        for n in req.topic_names {
            targets.push((Some(n), uuid::Uuid::nil()));
        }
    }
    let mut r = DeleteTopicsResponse::default();
    for (name, id) in targets {
        let mut res = DeletableTopicResult::default();
        res.topic_id = id;
        let resolved = match &name {
            Some(n) => Some(n.0.to_string()),
            None => broker
                .log
                .all()
                .into_iter()
                .find(|t| uuid::Uuid::from_bytes(t.uuid()) == id)
                .map(|t| t.name.to_string()),
        };
        res.name = name.clone().or_else(|| {
            resolved
                .clone()
                .map(|n| TopicName(StrBytes::from_string(n)))
        });
        match resolved {
            None => res.error_code = errors::UNKNOWN_TOPIC_ID,
            Some(n) if !grants.may_kafka(Op::Admin, &n) => {
                res.error_code = errors::TOPIC_AUTHORIZATION_FAILED;
                res.error_message = Some(StrBytes::from_static_str(errors::NOT_ALLOWED));
            }
            Some(n) => {
                let id = broker.log.get(&n).map(|t| t.id);
                let r = broker.log.delete(&n).await;
                if let (Ok(()), Some(id)) = (&r, id) {
                    broker.sources.close(id);
                    broker.tiers.forget(id);
                }
                if let Err(e) = r {
                    res.error_code = errors::topic_error(&e);
                    res.error_message = Some(StrBytes::from_string(e.to_string()));
                }
            }
        }
        r.responses.push(res);
    }
    r
}
