//! DescribeConfigs: topic configs (explicit and defaults) and the broker's own.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use crate::acl::Grants;
use crate::broker::{Broker, NODE_ID};
use crate::log::TOPIC_CONFIG_DEFAULTS;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

fn entry(name: &str, value: &str, source: i8, read_only: bool) -> DescribeConfigsResourceResult {
    let mut c = DescribeConfigsResourceResult::default();
    c.name = StrBytes::from_string(name.to_string());
    c.value = Some(StrBytes::from_string(value.to_string()));
    c.config_source = source;
    c.read_only = read_only;
    c
}

pub(super) fn handle(
    broker: &Broker,
    grants: &Grants,
    req: DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let mut r = DescribeConfigsResponse::default();
    for res in req.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        let wanted = |k: &str| {
            res.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|x| x.as_str() == k))
        };
        match res.resource_type {
            TOPIC if !grants.sees_kafka(res.resource_name.as_str()) => {
                out.error_code = errors::TOPIC_AUTHORIZATION_FAILED;
                out.error_message = Some(StrBytes::from_static_str(errors::NOT_ALLOWED));
            }
            TOPIC => match broker.log.get(res.resource_name.as_str()) {
                Some(t) => {
                    let explicit = t.configs();
                    for (k, default) in TOPIC_CONFIG_DEFAULTS {
                        if !wanted(k) {
                            continue;
                        }
                        match explicit.get(*k) {
                            Some(v) => out.configs.push(entry(k, v, SOURCE_TOPIC, false)),
                            None => out.configs.push(entry(k, default, SOURCE_DEFAULT, false)),
                        }
                    }
                }
                None => {
                    out.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
                    out.error_message = Some(StrBytes::from_static_str("unknown topic"));
                }
            },
            BROKER
                if res.resource_name.is_empty()
                    || res.resource_name.as_str() == NODE_ID.to_string() =>
            {
                let k = &broker.config.kafka;
                let items = [
                    ("broker.id", NODE_ID.to_string()),
                    (
                        "auto.create.topics.enable",
                        k.auto_create_topics.to_string(),
                    ),
                    ("num.partitions", k.default_partitions.to_string()),
                    ("socket.request.max.bytes", k.max_frame_bytes.to_string()),
                    ("log.retention.ms", "604800000".to_string()),
                    ("default.replication.factor", "1".to_string()),
                ];
                for (name, value) in items {
                    if wanted(name) {
                        out.configs
                            .push(entry(name, &value, SOURCE_STATIC_BROKER, true));
                    }
                }
            }
            _ => {
                out.error_code = errors::INVALID_REQUEST;
                out.error_message = Some(StrBytes::from_static_str("unsupported resource"));
            }
        }
        r.results.push(out);
    }
    r
}
