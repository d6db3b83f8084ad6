//! CreateTopics: one durable metadata write per request, however many topics it names.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;

use tracing::warn;

use super::errors;
use crate::acl::{Grants, Op};
use crate::broker::Broker;
use crate::log::NewTopic;

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: CreateTopicsRequest,
    _version: i16,
) -> CreateTopicsResponse {
    let mut results: Vec<CreatableTopicResult> = Vec::with_capacity(req.topics.len());
    let mut new = Vec::new();
    let mut slots = Vec::new();
    for t in req.topics {
        let mut res = CreatableTopicResult::default();
        res.name = t.name.clone();
        let partitions = if t.num_partitions == -1 {
            broker.config.kafka.default_partitions as i32
        } else {
            t.num_partitions
        };
        res.num_partitions = partitions;
        res.replication_factor = 1;
        // Creating a topic with chosen partitions and configs is administration
        // (Kafka: Create); auto-creation by Metadata needs only the right to write.
        if !grants.may_kafka(Op::Admin, t.name.0.as_str()) {
            res.error_code = errors::TOPIC_AUTHORIZATION_FAILED;
            res.error_message = Some(StrBytes::from_static_str(errors::NOT_ALLOWED));
            results.push(res);
            continue;
        }
        if t.replication_factor != -1 && t.replication_factor != 1 {
            res.error_code = errors::INVALID_REPLICATION_FACTOR;
            res.error_message = Some(StrBytes::from_string(format!(
                "replication factor {} is not available: this cluster has one broker",
                t.replication_factor
            )));
            results.push(res);
            continue;
        }
        if partitions <= 0 && t.assignments.is_empty() {
            res.error_code = errors::INVALID_PARTITIONS;
            res.error_message = Some(StrBytes::from_static_str(
                "number of partitions must be positive",
            ));
            results.push(res);
            continue;
        }
        let partitions = if t.assignments.is_empty() {
            partitions
        } else {
            t.assignments.len() as i32
        };
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        if let Some(src) = configs.get(crate::source::SOURCE) {
            // The prefix must be listable now; a typo fails here, not in a log later.
            if crate::source::Spec::parse(src).is_ok() {
                if let Err(e) = broker.sources.probe(src).await {
                    res.error_code = errors::INVALID_CONFIG;
                    res.error_message = Some(StrBytes::from_string(format!(
                        "source {src}: cannot list it: {e}"
                    )));
                    results.push(res);
                    continue;
                }
            }
        }
        new.push(NewTopic {
            name: t.name.0.to_string(),
            partitions: partitions as u32,
            configs,
        });
        slots.push(results.len());
        results.push(res);
    }
    let outcomes = broker.log.create(new, req.validate_only).await;
    for (slot, outcome) in slots.into_iter().zip(outcomes) {
        let res = &mut results[slot];
        match outcome {
            Ok(()) => {
                if let Some(t) = broker.log.get(res.name.0.as_str()) {
                    res.topic_id = uuid::Uuid::from_bytes(t.uuid());
                    if !req.validate_only {
                        if let Err(e) = broker.sources.open(&t) {
                            warn!(topic = %t.name, cause = %e, "S3-backed topic not served");
                        }
                    }
                }
            }
            Err(e) => {
                res.error_code = errors::topic_error(&e);
                res.error_message = Some(StrBytes::from_string(e.to_string()));
            }
        }
    }
    let mut r = CreateTopicsResponse::default();
    r.topics = results;
    r
}
