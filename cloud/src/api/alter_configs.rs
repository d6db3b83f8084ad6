//! AlterConfigs and IncrementalAlterConfigs: change a topic's configs after creation
//! (`kafka-configs --alter`, `AdminClient.incremental_alter_configs`). AlterConfigs
//! replaces the topic's explicit configs with those given (the rest return to their
//! defaults); IncrementalAlterConfigs sets, deletes (back to the default), appends to or
//! subtracts from single configs. Either is checked as at creation
//! (`Log::alter_configs`), stored durably, and applies from the next append, fetch or
//! retention/compaction pass. Broker configs come from `cloud.yaml` and are refused.

use std::collections::BTreeMap;

use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use crate::acl::{Grants, Op};
use crate::broker::Broker;
use crate::log::TopicError;

const TOPIC: i8 = 2;
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;
/// Configs whose value is a list (APPEND and SUBTRACT apply to them only).
const LISTS: [&str; 1] = ["cleanup.policy"];

fn invalid(key: &str, reason: &str) -> TopicError {
    TopicError::InvalidConfig {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// The outcome of one resource: (error code, message).
async fn alter(
    broker: &Broker,
    grants: &Grants,
    resource_type: i8,
    name: &str,
    change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), TopicError>,
    validate_only: bool,
) -> (i16, Option<StrBytes>) {
    if resource_type != TOPIC {
        let m = "only topic configs can be altered; broker configs come from cloud.yaml";
        return (errors::INVALID_REQUEST, Some(StrBytes::from_static_str(m)));
    }
    if !grants.may_kafka(Op::Admin, name) {
        let m = StrBytes::from_static_str(errors::NOT_ALLOWED);
        return (errors::TOPIC_AUTHORIZATION_FAILED, Some(m));
    }
    match broker.log.alter_configs(name, change, validate_only).await {
        Ok(()) => (errors::NONE, None),
        Err(e) => (
            errors::topic_error(&e),
            Some(StrBytes::from_string(e.to_string())),
        ),
    }
}

pub(super) async fn handle(
    broker: &Broker,
    grants: &Grants,
    req: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let mut r = AlterConfigsResponse::default();
    for res in req.resources {
        let configs: Vec<(String, Option<String>)> = res
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
            .collect();
        let replace = move |m: &mut BTreeMap<String, String>| {
            m.clear();
            for (k, v) in configs {
                let v = v.ok_or_else(|| invalid(&k, "null value"))?;
                m.insert(k, v);
            }
            Ok(())
        };
        let name = res.resource_name.to_string();
        let (code, message) = alter(
            broker,
            grants,
            res.resource_type,
            &name,
            replace,
            req.validate_only,
        )
        .await;
        let mut out = alter_configs_response::AlterConfigsResourceResponse::default();
        out.error_code = code;
        out.error_message = message;
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name;
        r.responses.push(out);
    }
    r
}

/// Applies one IncrementalAlterConfigs operation to the explicit configs.
fn apply(
    m: &mut BTreeMap<String, String>,
    key: String,
    op: i8,
    value: Option<String>,
) -> Result<(), TopicError> {
    let list = |m: &BTreeMap<String, String>, key: &str| -> Vec<String> {
        m.get(key)
            .map(String::as_str)
            .or(crate::log::default_config(key))
            .unwrap_or_default()
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    };
    match op {
        SET => {
            let v = value.ok_or_else(|| invalid(&key, "SET needs a value"))?;
            m.insert(key, v);
        }
        DELETE => {
            m.remove(&key);
        }
        APPEND | SUBTRACT if LISTS.contains(&key.as_str()) => {
            let v = value.ok_or_else(|| invalid(&key, "APPEND and SUBTRACT need a value"))?;
            let mut items = list(m, &key);
            for x in v.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                if op == APPEND && !items.iter().any(|i| i == x) {
                    items.push(x.to_string());
                } else if op == SUBTRACT {
                    items.retain(|i| i != x);
                }
            }
            m.insert(key, items.join(","));
        }
        APPEND | SUBTRACT => return Err(invalid(&key, "not a list config")),
        _ => return Err(invalid(&key, "unknown config operation")),
    }
    Ok(())
}

pub(super) async fn handle_incremental(
    broker: &Broker,
    grants: &Grants,
    req: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let mut r = IncrementalAlterConfigsResponse::default();
    for res in req.resources {
        let ops: Vec<(String, i8, Option<String>)> = res
            .configs
            .iter()
            .map(|c| {
                let value = c.value.as_ref().map(|v| v.to_string());
                (c.name.to_string(), c.config_operation, value)
            })
            .collect();
        let change = move |m: &mut BTreeMap<String, String>| {
            for (k, op, v) in ops {
                apply(m, k, op, v)?;
            }
            Ok(())
        };
        let name = res.resource_name.to_string();
        let (code, message) = alter(
            broker,
            grants,
            res.resource_type,
            &name,
            change,
            req.validate_only,
        )
        .await;
        let mut out = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
        out.error_code = code;
        out.error_message = message;
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name;
        r.responses.push(out);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        start: &[(&str, &str)],
        ops: &[(&str, i8, Option<&str>)],
    ) -> Result<Vec<(String, String)>, String> {
        let mut m: BTreeMap<String, String> = start
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, op, v) in ops {
            apply(&mut m, k.to_string(), *op, v.map(str::to_string)).map_err(|e| e.to_string())?;
        }
        Ok(m.into_iter().collect())
    }

    #[test]
    fn incremental_operations() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        // APPEND starts from the default (delete) and does not repeat an item.
        assert_eq!(
            run(
                &[],
                &[
                    ("cleanup.policy", APPEND, Some("compact")),
                    ("cleanup.policy", APPEND, Some("delete"))
                ]
            ),
            Ok(vec![kv("cleanup.policy", "delete,compact")])
        );
        assert_eq!(
            run(
                &[("cleanup.policy", "delete,compact")],
                &[("cleanup.policy", SUBTRACT, Some("delete"))]
            ),
            Ok(vec![kv("cleanup.policy", "compact")])
        );
        assert_eq!(
            run(
                &[("retention.ms", "5")],
                &[
                    ("retention.ms", DELETE, None),
                    ("segment.bytes", SET, Some("9"))
                ]
            ),
            Ok(vec![kv("segment.bytes", "9")])
        );
        assert!(run(&[], &[("retention.ms", APPEND, Some("5"))])
            .is_err_and(|e| e.contains("not a list")));
        assert!(
            run(&[], &[("retention.ms", SET, None)]).is_err_and(|e| e.contains("needs a value"))
        );
        assert!(run(&[], &[("retention.ms", 9, Some("1"))])
            .is_err_and(|e| e.contains("unknown config operation")));
    }
}
