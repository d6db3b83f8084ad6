//! Who a client certificate says its client is: the subject's common name (CN).
//!
//! A listener with a `client_ca` (mutual TLS) accepts only clients whose certificate
//! that CA signed, so the certificate is the client's authentication, and its CN is
//! the user name `acl` rules name: the MQTT equivalent of Mosquitto's
//! `use_identity_as_username`, the Kafka one of `ssl.principal.mapping.rules` mapping
//! `CN=alice,...` to `alice`. A certificate without a CN (or one that is not UTF-8)
//! names nobody: the client is anonymous.

use tokio_rustls::rustls::pki_types::CertificateDer;

/// The common name of the first (leaf) certificate of a verified peer chain.
pub(crate) fn common_name(chain: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = chain?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str()
        .ok()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The client identity of a TLS server connection, if it presented a certificate.
pub(crate) fn of<S>(tls: &tokio_rustls::server::TlsStream<S>) -> Option<String> {
    common_name(tls.get_ref().1.peer_certificates())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate, subject `O=edge-cloud test, CN=gateway-17`.
    const CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBtTCCAVugAwIBAgIUZ42y5zkCuonGTQD7aOOUOuAzAzUwCgYIKoZIzj0EAwIw\n\
LzEYMBYGA1UECgwPZWRnZS1jbG91ZCB0ZXN0MRMwEQYDVQQDDApnYXRld2F5LTE3\n\
MCAXDTI2MTEyNTIwMTc1OFoYDzIxMjYxMTAxMjAxNzU4WjAvMRgwFgYDVQQKDA9l\n\
ZGdlLWNsb3VkIHRlc3QxEzARBgNVBAMMCmdhdGV3YXktMTcwWTATBgcqhkjOPQIB\n\
BggqhkjOPQMBBwNCAAQapNrp29AfLa3FSwSYIlNmuBwpVrTdU4Nq9gklOiLLtEV7\n\
8igvmFYo5KncbmtKXOm/61PQut0pr+4ZI333LV6jo1MwUTAdBgNVHQ4EFgQU81Gb\n\
EaX3dYHTpk/AuJY1eA7mgMAwHwYDVR0jBBgwFoAU81GbEaX3dYHTpk/AuJY1eA7m\n\
gMAwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAhANLSunDLyGD\n\
SOO8AaLxrMtHhkZfTbupVVtbO1AtkaUCICimXV9S22PjPys25NQKA1hLEIdOfwz4\n\
rcEjUxuwvjob\n\
-----END CERTIFICATE-----\n\
";

    #[test]
    fn the_leafs_common_name_is_the_user() {
        let der = rustls_pemfile::certs(&mut CERT.as_bytes())
            .next()
            .expect("one certificate")
            .expect("pem");
        assert_eq!(common_name(Some(&[der])).as_deref(), Some("gateway-17"));
    }

    #[test]
    fn no_chain_or_garbage_names_nobody() {
        assert_eq!(common_name(None), None);
        assert_eq!(common_name(Some(&[])), None);
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert_eq!(common_name(Some(&[junk])), None);
    }
}
