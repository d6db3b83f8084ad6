//! Kafka APIs: one file per API with its handler (parse -> apply -> response); this file
//! holds the advertised versions and the dispatch. Kafka error codes are chosen here only.

mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
pub(crate) mod errors;
mod fetch;
mod find_coordinator;
mod heartbeat;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod metadata;
mod offset_commit;
mod offset_fetch;
mod produce;
mod sync_group;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;

use crate::broker::Broker;
use crate::wire::{self, Request};

/// What this broker advertises: (api, min, max). Decoding is only attempted inside these
/// ranges. Produce is advertised from v0 as Kafka 4 does (librdkafka turns compression off
/// otherwise); v0-2 requests are refused. Topic-id versions (Produce 13, Fetch 13+) are
/// not advertised.
pub(crate) const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DescribeCluster, 0, 1),
];

/// Whether a request can be decoded: advertised, and within the codec's own range.
pub(crate) fn decodable(api: ApiKey, version: i16) -> bool {
    let codec = api.valid_versions();
    SUPPORTED
        .iter()
        .any(|(a, lo, hi)| *a == api && version >= *lo && version <= *hi)
        && version >= codec.min
        && version <= codec.max
}

/// The outcome of one request.
pub(crate) enum Reply {
    /// A response message to encode with the request's version.
    Message(Box<ResponseKind>),
    /// A response body already encoded (cached Metadata).
    Encoded(Bytes),
    /// No response (Produce with acks=0).
    Nothing,
}

impl Reply {
    pub(crate) fn message(m: ResponseKind) -> Reply {
        Reply::Message(Box::new(m))
    }
}

/// Connection facts a handler may need.
pub(crate) struct Peer {
    pub(crate) host: String,
}

/// An encoded response: the frame's head (length prefix, header, and usually the whole
/// body) and, for cached bodies, the body itself, written after the head without a copy.
pub(crate) struct Response {
    pub(crate) head: BytesMut,
    pub(crate) tail: Option<Bytes>,
}

/// Decodes, handles and encodes one request frame. `Ok(None)` means no response.
/// An error means the connection must be closed.
pub(crate) async fn handle(
    broker: &Broker,
    peer: &Peer,
    body: Bytes,
) -> Result<Option<Response>, wire::Error> {
    let pre = wire::preamble(&body)?;
    if pre.api_key == ApiKey::ApiVersions as i16 && !decodable(ApiKey::ApiVersions, pre.api_version)
    {
        // KIP-511: answer in the v0 shape with UNSUPPORTED_VERSION, keep the connection.
        let head = frame(pre.correlation_id, 0, &api_versions::unsupported(), 0)?;
        return Ok(Some(Response { head, tail: None }));
    }
    let req = wire::decode_request(body, decodable)?;
    let version = req.version;
    let correlation_id = req.header.correlation_id;
    let api = req.api;
    let reply = dispatch(broker, peer, req).await;
    let header_version = api.response_header_version(version);
    match reply {
        Reply::Nothing => Ok(None),
        Reply::Message(msg) => {
            let msg = *msg;
            let mut out = start_frame(correlation_id, header_version)?;
            msg.encode(&mut out, version)
                .map_err(|e| encode_err(api, version, e))?;
            Ok(Some(Response {
                head: finish_frame(out, 0),
                tail: None,
            }))
        }
        Reply::Encoded(bytes) => {
            let out = start_frame(correlation_id, header_version)?;
            Ok(Some(Response {
                head: finish_frame(out, bytes.len()),
                tail: Some(bytes),
            }))
        }
    }
}

async fn dispatch(broker: &Broker, peer: &Peer, req: Request) -> Reply {
    let v = req.version;
    let h = &req.header;
    match req.body {
        RequestKind::ApiVersions(r) => {
            Reply::message(ResponseKind::ApiVersions(api_versions::handle(r, v)))
        }
        RequestKind::Metadata(r) => metadata::handle(broker, r, v).await,
        RequestKind::Produce(r) => produce::handle(broker, r, v).await,
        RequestKind::Fetch(r) => {
            Reply::message(ResponseKind::Fetch(fetch::handle(broker, r, v).await))
        }
        RequestKind::ListOffsets(r) => Reply::message(ResponseKind::ListOffsets(
            list_offsets::handle(broker, r, v),
        )),
        RequestKind::CreateTopics(r) => Reply::message(ResponseKind::CreateTopics(
            create_topics::handle(broker, r, v).await,
        )),
        RequestKind::DeleteTopics(r) => Reply::message(ResponseKind::DeleteTopics(
            delete_topics::handle(broker, r, v).await,
        )),
        RequestKind::CreatePartitions(r) => Reply::message(ResponseKind::CreatePartitions(
            create_partitions::handle(broker, r, v).await,
        )),
        RequestKind::DescribeConfigs(r) => Reply::message(ResponseKind::DescribeConfigs(
            describe_configs::handle(broker, r, v),
        )),
        RequestKind::DescribeCluster(r) => Reply::message(ResponseKind::DescribeCluster(
            describe_cluster::handle(broker, r, v),
        )),
        RequestKind::FindCoordinator(r) => Reply::message(ResponseKind::FindCoordinator(
            find_coordinator::handle(broker, r, v),
        )),
        RequestKind::JoinGroup(r) => Reply::message(ResponseKind::JoinGroup(
            join_group::handle(broker, r, v, h, &peer.host).await,
        )),
        RequestKind::SyncGroup(r) => Reply::message(ResponseKind::SyncGroup(
            sync_group::handle(broker, r, v).await,
        )),
        RequestKind::Heartbeat(r) => {
            Reply::message(ResponseKind::Heartbeat(heartbeat::handle(broker, r, v)))
        }
        RequestKind::LeaveGroup(r) => {
            Reply::message(ResponseKind::LeaveGroup(leave_group::handle(broker, r, v)))
        }
        RequestKind::OffsetCommit(r) => Reply::message(ResponseKind::OffsetCommit(
            offset_commit::handle(broker, r, v).await,
        )),
        RequestKind::OffsetFetch(r) => Reply::message(ResponseKind::OffsetFetch(
            offset_fetch::handle(broker, r, v),
        )),
        RequestKind::ListGroups(r) => {
            Reply::message(ResponseKind::ListGroups(list_groups::handle(broker, r, v)))
        }
        RequestKind::DescribeGroups(r) => Reply::message(ResponseKind::DescribeGroups(
            describe_groups::handle(broker, r, v),
        )),
        RequestKind::DeleteGroups(r) => Reply::message(ResponseKind::DeleteGroups(
            delete_groups::handle(broker, r, v).await,
        )),
        RequestKind::InitProducerId(r) => Reply::message(ResponseKind::InitProducerId(
            init_producer_id::handle(broker, r, v).await,
        )),
        // `decodable` admits only the APIs above.
        _ => Reply::Nothing,
    }
}

fn encode_err(api: ApiKey, version: i16, e: anyhow::Error) -> wire::Error {
    wire::Error::Malformed {
        api,
        version,
        reason: format!("response encoding failed: {e}"),
    }
}

fn start_frame(correlation_id: i32, header_version: i16) -> Result<BytesMut, wire::Error> {
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    let mut h = ResponseHeader::default();
    h.correlation_id = correlation_id;
    h.encode(&mut out, header_version)
        .map_err(|e| encode_err(ApiKey::ApiVersions, header_version, e))?;
    Ok(out)
}

fn finish_frame(mut out: BytesMut, tail_len: usize) -> BytesMut {
    let len = (out.len() - 4 + tail_len) as i32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    out
}

fn frame<T: Encodable>(
    correlation_id: i32,
    header_version: i16,
    msg: &T,
    version: i16,
) -> Result<BytesMut, wire::Error> {
    let mut out = start_frame(correlation_id, header_version)?;
    msg.encode(&mut out, version)
        .map_err(|e| encode_err(ApiKey::ApiVersions, version, e))?;
    Ok(finish_frame(out, 0))
}
