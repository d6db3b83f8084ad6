//! InitProducerId: idempotent producers get a fresh durable id; transactions are not
//! supported and are refused.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use tracing::error;

use super::errors;
use crate::broker::Broker;

pub(super) async fn handle(
    broker: &Broker,
    req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    if req.transactional_id.is_some() {
        r.error_code = errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        r.producer_id = ProducerId(-1);
        r.producer_epoch = -1;
        return r;
    }
    match broker.next_producer_id().await {
        Ok(id) => {
            r.producer_id = ProducerId(id);
            r.producer_epoch = 0;
        }
        Err(e) => {
            error!(cause = %e, "producer id allocation failed");
            r.error_code = errors::KAFKA_STORAGE_ERROR;
            r.producer_id = ProducerId(-1);
            r.producer_epoch = -1;
        }
    }
    r
}
