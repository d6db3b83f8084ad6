//! The Kafka wire codec: size-prefixed frames and request headers. Bytes in, values out;
//! no sockets. Tells "need more bytes" (`Ok(None)`) from "bad bytes" (`Err`), and checks
//! the length prefix against the cap before anything is allocated.

pub mod fetch;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("frame of {len} bytes exceeds the {max}-byte cap")]
    TooLarge { len: i64, max: usize },
    #[error("negative frame length {0}")]
    NegativeLength(i32),
    #[error("frame too short for a request header ({0} bytes)")]
    ShortHeader(usize),
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("unsupported version {version} of {api:?}")]
    UnsupportedVersion { api: ApiKey, version: i16 },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Returns the length of the complete frame at the start of `buf` (prefix included), or
/// `None` when more bytes are needed.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, Error> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 0 {
        return Err(Error::NegativeLength(len));
    }
    if len as usize > max {
        return Err(Error::TooLarge {
            len: len as i64,
            max,
        });
    }
    let total = 4 + len as usize;
    Ok(if buf.len() >= total {
        Some(total)
    } else {
        None
    })
}

/// The fixed start of every request header (v0 layout), readable before the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

pub fn preamble(body: &[u8]) -> Result<Preamble, Error> {
    if body.len() < 8 {
        return Err(Error::ShortHeader(body.len()));
    }
    Ok(Preamble {
        api_key: i16::from_be_bytes([body[0], body[1]]),
        api_version: i16::from_be_bytes([body[2], body[3]]),
        correlation_id: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
    })
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub api: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// Decodes a frame body (length prefix removed) whose version is within `supported`.
pub fn decode_request(
    mut body: Bytes,
    supported: impl Fn(ApiKey, i16) -> bool,
) -> Result<Request, Error> {
    let p = preamble(&body)?;
    let api = ApiKey::try_from(p.api_key).map_err(|_| Error::UnknownApiKey(p.api_key))?;
    if !supported(api, p.api_version) {
        return Err(Error::UnsupportedVersion {
            api,
            version: p.api_version,
        });
    }
    let malformed = |reason: String| Error::Malformed {
        api,
        version: p.api_version,
        reason,
    };
    let header_version = api.request_header_version(p.api_version);
    let header =
        RequestHeader::decode(&mut body, header_version).map_err(|e| malformed(e.to_string()))?;
    let req =
        RequestKind::decode(api, &mut body, p.api_version).map_err(|e| malformed(e.to_string()))?;
    if body.has_remaining() && header_version < 2 {
        // Non-flexible versions have no tagged fields: trailing bytes mean a framing error.
        return Err(malformed(format!("{} trailing bytes", body.remaining())));
    }
    Ok(Request {
        api,
        version: p.api_version,
        header,
        body: req,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use proptest::prelude::*;

    fn encode_req<T: Encodable>(api: ApiKey, version: i16, req: &T) -> Bytes {
        let mut h = RequestHeader::default();
        h.request_api_key = api as i16;
        h.request_api_version = version;
        h.correlation_id = 7;
        h.client_id = Some(StrBytes::from_static_str("t"));
        let mut b = BytesMut::new();
        h.encode(&mut b, api.request_header_version(version))
            .expect("header");
        req.encode(&mut b, version).expect("body");
        b.freeze()
    }

    #[test]
    fn frame_len_needs_more_or_rejects() {
        assert_eq!(frame_len(&[0, 0], 100).expect("short"), None);
        assert_eq!(frame_len(&[0, 0, 0, 2, 1], 100).expect("partial"), None);
        assert_eq!(
            frame_len(&[0, 0, 0, 2, 1, 2, 3], 100).expect("full"),
            Some(6)
        );
        assert!(matches!(
            frame_len(&[0x7f, 0xff, 0xff, 0xff], 100),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            frame_len(&[0xff, 0xff, 0xff, 0xff], 100),
            Err(Error::NegativeLength(-1))
        ));
    }

    #[test]
    fn decodes_real_requests() {
        let b = encode_req(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        let r = decode_request(b, |_, _| true).expect("decode");
        assert_eq!(r.api, ApiKey::ApiVersions);
        assert_eq!(r.header.correlation_id, 7);
        let b = encode_req(ApiKey::Metadata, 12, &MetadataRequest::default());
        assert!(decode_request(b, |_, v| v < 12).is_err());
    }

    #[test]
    fn unknown_key_and_truncation_are_errors() {
        let b = Bytes::from_static(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(
            decode_request(b, |_, _| true),
            Err(Error::UnknownApiKey(0x7f00))
        ));
        let full = encode_req(ApiKey::Metadata, 9, &MetadataRequest::default());
        for cut in 0..full.len() {
            assert!(
                decode_request(full.slice(..cut), |_, _| true).is_err(),
                "cut at {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_request(Bytes::from(data), |_, _| true);
        }
    }
}
