//! Kafka APIs: one file per API with its handler (parse -> apply -> response); this file
//! holds the advertised versions and the dispatch. Kafka error codes are chosen here only.

mod alter_configs;
mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_records;
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
pub(crate) mod sasl;
mod sasl_authenticate;
mod sasl_handshake;
mod sync_group;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use common::kafka::frame::Frame;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;

use crate::acl::Grants;
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
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DescribeCluster, 0, 1),
];

/// Advertised (and served) only when the listener has SASL (`kafka.sasl`).
pub(crate) const SASL_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// Everything this listener advertises.
pub(crate) fn advertised(sasl: bool) -> impl Iterator<Item = &'static (ApiKey, i16, i16)> {
    let extra: &'static [_] = if sasl { SASL_APIS } else { &[] };
    SUPPORTED.iter().chain(extra)
}

/// Whether a request can be decoded: advertised, and within the codec's own range.
pub(crate) fn decodable(api: ApiKey, version: i16, sasl: bool) -> bool {
    let codec = api.valid_versions();
    advertised(sasl).any(|(a, lo, hi)| *a == api && version >= *lo && version <= *hi)
        && version >= codec.min
        && version <= codec.max
}

/// Why a connection must be closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(transparent)]
    Wire(#[from] wire::Error),
    #[error("api key {0} before sasl authentication")]
    Unauthenticated(i16),
    #[error("sasl (v0 token): {0}")]
    RawToken(sasl::PlainError),
}

/// The outcome of one request.
pub(crate) enum Reply {
    /// A response message to encode with the request's version.
    Message(Box<ResponseKind>),
    /// A response body already encoded (cached Metadata).
    Encoded(Bytes),
    /// A Fetch response, encoded with its record batches spliced in (`wire::fetch`).
    Fetch(wire::fetch::Body),
    /// The last response on this connection: sent, then the connection is closed
    /// (a failed SASL exchange).
    Last(Box<ResponseKind>),
    /// No response (Produce with acks=0).
    Nothing,
}

impl Reply {
    pub(crate) fn message(m: ResponseKind) -> Reply {
        Reply::Message(Box::new(m))
    }
    pub(crate) fn last(m: ResponseKind) -> Reply {
        Reply::Last(Box::new(m))
    }
}

/// Connection facts and state a handler may need.
pub(crate) struct Peer {
    /// Unique per connection (a shared group's batches are pending on a connection).
    pub(crate) id: u64,
    pub(crate) host: String,
    /// Authentication state (`Sasl::Off` without `kafka.sasl`).
    pub(crate) sasl: sasl::Sasl,
    /// The user a verified client certificate names (mutual TLS).
    pub(crate) identity: Option<String>,
    /// What this connection may do under `acl`, once known (see [`Peer::grants`]).
    pub(crate) grants: Option<Arc<Grants>>,
}

impl Peer {
    /// What this connection may do under `acl`: as its SASL user, else as the user its
    /// client certificate names (Kafka's principal is the SASL one when there is
    /// both), else anonymous. Only ApiVersions and the SASL requests are served before
    /// authentication, and they need no grants, so the first request that does fixes
    /// them.
    fn grants(&mut self, broker: &Broker) -> Arc<Grants> {
        if let Some(g) = &self.grants {
            return g.clone();
        }
        let g = Arc::new(match &broker.acl {
            None => Grants::all(),
            Some(acl) => match &self.sasl {
                sasl::Sasl::Done(user) => acl.grants(Some(user), None),
                _ => acl.grants(self.identity.as_deref(), None),
            },
        });
        self.grants = Some(g.clone());
        g
    }
}

/// An encoded response frame (length prefix included): its buffer, and the byte strings
/// written after parts of it without a copy (a cached body, Fetch's record batches).
pub(crate) struct Response {
    pub(crate) frame: Frame,
    /// Close the connection once this is written.
    pub(crate) close: bool,
}

/// Decodes, handles and encodes one request frame. `Ok(None)` means no response.
/// An error means the connection must be closed.
pub(crate) async fn handle(
    broker: &Broker,
    peer: &mut Peer,
    body: Bytes,
) -> Result<Option<Response>, Error> {
    let sasl_cfg = broker.config.kafka.sasl.as_ref();
    if let (sasl::Sasl::AwaitRawToken, Some(cfg)) = (&peer.sasl, sasl_cfg) {
        // After SaslHandshake v0 the token comes bare; success is an empty frame.
        let user = sasl::verify_plain(&cfg.users, &body).map_err(Error::RawToken)?;
        tracing::debug!(%user, "sasl authenticated (v0)");
        peer.sasl = sasl::Sasl::Done(user);
        let mut head = BytesMut::with_capacity(4);
        head.put_i32(0);
        return Ok(Some(Response {
            frame: Frame::new(head),
            close: false,
        }));
    }
    let with_sasl = sasl_cfg.is_some();
    let pre = wire::preamble(&body)?;
    if !peer.sasl.admits(pre.api_key) {
        return Err(Error::Unauthenticated(pre.api_key));
    }
    if pre.api_key == ApiKey::ApiVersions as i16
        && !decodable(ApiKey::ApiVersions, pre.api_version, with_sasl)
    {
        // KIP-511: answer in the v0 shape with UNSUPPORTED_VERSION, keep the connection.
        let table = api_versions::unsupported(with_sasl);
        return Ok(Some(Response {
            frame: frame(pre.correlation_id, 0, &table, 0)?,
            close: false,
        }));
    }
    let req = wire::decode_request(body, |a, v| decodable(a, v, with_sasl))?;
    let version = req.version;
    let correlation_id = req.header.correlation_id;
    let api = req.api;
    crate::metrics::get().request(api as i16);
    let reply = dispatch(broker, peer, req).await;
    let header_version = api.response_header_version(version);
    let (msg, close) = match reply {
        Reply::Nothing => return Ok(None),
        Reply::Encoded(bytes) => {
            let mut f = start_frame(correlation_id, header_version)?;
            f.splices.push((f.buf.len(), bytes));
            return Ok(Some(Response {
                frame: finish_frame(f, api, version)?,
                close: false,
            }));
        }
        Reply::Fetch(body) => {
            let mut f = start_frame(correlation_id, header_version)?;
            wire::fetch::encode(&mut f, &body, version)
                .map_err(|e| encode_err(api, version, e.into()))?;
            return Ok(Some(Response {
                frame: finish_frame(f, api, version)?,
                close: false,
            }));
        }
        Reply::Message(msg) => (*msg, false),
        Reply::Last(msg) => (*msg, true),
    };
    let mut f = start_frame(correlation_id, header_version)?;
    msg.encode(&mut f.buf, version)
        .map_err(|e| encode_err(api, version, e))?;
    Ok(Some(Response {
        frame: finish_frame(f, api, version)?,
        close,
    }))
}

async fn dispatch(broker: &Broker, peer: &mut Peer, req: Request) -> Reply {
    let v = req.version;
    let h = &req.header;
    let sasl_cfg = broker.config.kafka.sasl.as_ref();
    match req.body {
        RequestKind::ApiVersions(r) => Reply::message(ResponseKind::ApiVersions(
            api_versions::handle(r, v, sasl_cfg.is_some()),
        )),
        RequestKind::SaslHandshake(r) => match sasl_cfg {
            Some(cfg) => sasl_handshake::handle(cfg, &mut peer.sasl, r, v),
            None => Reply::Nothing,
        },
        RequestKind::SaslAuthenticate(r) => match sasl_cfg {
            Some(cfg) => sasl_authenticate::handle(cfg, &mut peer.sasl, r),
            None => Reply::Nothing,
        },
        RequestKind::Metadata(r) => metadata::handle(broker, &peer.grants(broker), r, v).await,
        RequestKind::Produce(r) => produce::handle(broker, &peer.grants(broker), r, v).await,
        RequestKind::Fetch(r) => {
            let client = h.client_id.as_ref().map(|c| c.as_str()).unwrap_or_default();
            let grants = peer.grants(broker);
            Reply::Fetch(fetch::handle(broker, r, v, client, peer, &grants).await)
        }
        RequestKind::ListOffsets(r) => Reply::message(ResponseKind::ListOffsets(
            list_offsets::handle(broker, &peer.grants(broker), r, v).await,
        )),
        RequestKind::CreateTopics(r) => Reply::message(ResponseKind::CreateTopics(
            create_topics::handle(broker, &peer.grants(broker), r, v).await,
        )),
        RequestKind::DeleteTopics(r) => Reply::message(ResponseKind::DeleteTopics(
            delete_topics::handle(broker, &peer.grants(broker), r, v).await,
        )),
        RequestKind::CreatePartitions(r) => Reply::message(ResponseKind::CreatePartitions(
            create_partitions::handle(broker, &peer.grants(broker), r, v).await,
        )),
        RequestKind::DescribeConfigs(r) => Reply::message(ResponseKind::DescribeConfigs(
            describe_configs::handle(broker, &peer.grants(broker), r, v),
        )),
        RequestKind::AlterConfigs(r) => Reply::message(ResponseKind::AlterConfigs(
            alter_configs::handle(broker, &peer.grants(broker), r, v).await,
        )),
        RequestKind::IncrementalAlterConfigs(r) => {
            Reply::message(ResponseKind::IncrementalAlterConfigs(
                alter_configs::handle_incremental(broker, &peer.grants(broker), r, v).await,
            ))
        }
        RequestKind::DeleteRecords(r) => Reply::message(ResponseKind::DeleteRecords(
            delete_records::handle(broker, &peer.grants(broker), r, v).await,
        )),
        RequestKind::DescribeCluster(r) => Reply::message(ResponseKind::DescribeCluster(
            describe_cluster::handle(broker, r, v),
        )),
        RequestKind::FindCoordinator(r) => Reply::message(ResponseKind::FindCoordinator(
            find_coordinator::handle(broker, &peer.grants(broker), r, v),
        )),
        RequestKind::JoinGroup(r) => Reply::message(ResponseKind::JoinGroup(
            join_group::handle(broker, &peer.grants(broker), r, v, h, &peer.host).await,
        )),
        RequestKind::SyncGroup(r) => Reply::message(ResponseKind::SyncGroup(
            sync_group::handle(broker, &peer.grants(broker), r, v).await,
        )),
        RequestKind::Heartbeat(r) => {
            let grants = peer.grants(broker);
            Reply::message(ResponseKind::Heartbeat(heartbeat::handle(
                broker, &grants, r, v,
            )))
        }
        RequestKind::LeaveGroup(r) => {
            let grants = peer.grants(broker);
            Reply::message(ResponseKind::LeaveGroup(leave_group::handle(
                broker, &grants, r, v,
            )))
        }
        RequestKind::OffsetCommit(r) => Reply::message(ResponseKind::OffsetCommit(
            offset_commit::handle(broker, &peer.grants(broker), r, v).await,
        )),
        RequestKind::OffsetFetch(r) => Reply::message(ResponseKind::OffsetFetch(
            offset_fetch::handle(broker, &peer.grants(broker), r, v),
        )),
        RequestKind::ListGroups(r) => {
            let grants = peer.grants(broker);
            Reply::message(ResponseKind::ListGroups(list_groups::handle(
                broker, &grants, r, v,
            )))
        }
        RequestKind::DescribeGroups(r) => Reply::message(ResponseKind::DescribeGroups(
            describe_groups::handle(broker, &peer.grants(broker), r, v),
        )),
        RequestKind::DeleteGroups(r) => Reply::message(ResponseKind::DeleteGroups(
            delete_groups::handle(broker, &peer.grants(broker), r, v).await,
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

/// A response frame's start: a length prefix to fill in and the response header.
fn start_frame(correlation_id: i32, header_version: i16) -> Result<Frame, wire::Error> {
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    let mut h = ResponseHeader::default();
    h.correlation_id = correlation_id;
    h.encode(&mut out, header_version)
        .map_err(|e| encode_err(ApiKey::ApiVersions, header_version, e))?;
    Ok(Frame::new(out))
}

/// Sets the length prefix of a response frame of `api` at `version`.
fn finish_frame(mut f: Frame, api: ApiKey, version: i16) -> Result<Frame, wire::Error> {
    f.set_length_prefix()
        .map_err(|e| encode_err(api, version, e.into()))?;
    Ok(f)
}

fn frame<T: Encodable>(
    correlation_id: i32,
    header_version: i16,
    msg: &T,
    version: i16,
) -> Result<Frame, wire::Error> {
    let mut f = start_frame(correlation_id, header_version)?;
    msg.encode(&mut f.buf, version)
        .map_err(|e| encode_err(ApiKey::ApiVersions, version, e))?;
    finish_frame(f, ApiKey::ApiVersions, version)
}
