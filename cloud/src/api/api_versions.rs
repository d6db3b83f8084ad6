//! ApiVersions: the advertised version table.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

use super::{advertised, errors};

fn table(sasl: bool) -> Vec<ApiVersion> {
    advertised(sasl)
        .map(|(api, lo, hi)| {
            let mut v = ApiVersion::default();
            v.api_key = *api as i16;
            v.min_version = *lo;
            v.max_version = *hi;
            v
        })
        .collect()
}

/// The table; the SASL APIs only when the listener has SASL.
pub(super) fn handle(_req: ApiVersionsRequest, _version: i16, sasl: bool) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = table(sasl);
    r
}

/// The answer to an ApiVersions request of a version we cannot parse: error 35 with the
/// table, to be encoded as v0 (KIP-511), so the client retries with a version we know.
pub(super) fn unsupported(sasl: bool) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = errors::UNSUPPORTED_VERSION;
    r.api_keys = table(sasl);
    r
}
