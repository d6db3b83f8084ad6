//! SASL/SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677, Kafka's KIP-84): both
//! sides of the exchange as state machines over messages, no I/O. The edge's uplink is
//! the client (`cloud.sasl.mechanism`); the cloud's Kafka listener the server
//! (`kafka.sasl.mechanisms`), which derives each user's keys from the configured
//! password with a salt of its own, once per process.
//!
//! ```text
//! client-first  n,,n=<user>,r=<client nonce>
//! server-first  r=<client nonce><server nonce>,s=<salt base64>,i=<iterations>
//! client-final  c=biws,r=<nonce>,p=<proof base64>
//! server-final  v=<server signature base64>
//! ```
//!
//! Channel binding is not offered (`n,,`: Kafka's clients never use it). Iterations are
//! 4096, Kafka's minimum and default; a client accepts 4096 to 16384.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Mutex, OnceLock};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};

use crate::secret::constant_time_eq;

/// Iterations the server asks for (Kafka's default and minimum).
pub const ITERATIONS: u32 = 4096;

/// Most iterations a client will compute (a server cannot make it burn more CPU).
const MAX_ITERATIONS: u32 = 16_384;

/// The hash of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scram {
    /// `SCRAM-SHA-256`.
    Sha256,
    /// `SCRAM-SHA-512`.
    Sha512,
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not parse.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The user is not known.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The client's proof is wrong (wrong password).
    #[error("wrong password for user {0:?}")]
    BadProof(String),
    /// The server's nonce does not extend ours, or its signature is wrong.
    #[error("the server failed SCRAM verification: {0}")]
    Server(&'static str),
    /// The server sent `e=...`.
    #[error("the server refused: {0}")]
    Refused(String),
}

impl Scram {
    /// The mechanism for a SASL name.
    pub fn from_name(name: &str) -> Option<Scram> {
        match name {
            "SCRAM-SHA-256" => Some(Scram::Sha256),
            "SCRAM-SHA-512" => Some(Scram::Sha512),
            _ => None,
        }
    }

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Scram::Sha256 => "SCRAM-SHA-256",
            Scram::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            Scram::Sha256 => hmac::HMAC_SHA256,
            Scram::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn hmac(self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        let k = hmac::Key::new(self.hmac_alg(), key);
        hmac::sign(&k, msg).as_ref().to_vec()
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            Scram::Sha256 => &digest::SHA256,
            Scram::Sha512 => &digest::SHA512,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }

    /// Hi(password, salt, i): PBKDF2 with this hash.
    fn salted(self, password: &str, salt: &[u8], iterations: NonZeroU32) -> Vec<u8> {
        let (alg, len) = match self {
            Scram::Sha256 => (pbkdf2::PBKDF2_HMAC_SHA256, 32),
            Scram::Sha512 => (pbkdf2::PBKDF2_HMAC_SHA512, 64),
        };
        let mut out = vec![0; len];
        pbkdf2::derive(alg, iterations, salt, password.as_bytes(), &mut out);
        out
    }
}

/// 24 random bytes (nonces, salts).
fn random() -> [u8; 24] {
    let mut b = [0u8; 24];
    // SystemRandom reads the OS generator; it fails only where there is none.
    if SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b[..16].copy_from_slice(&t.to_le_bytes());
    }
    b
}

fn nonce() -> String {
    B64.encode(random())
}

/// `,`-separated `k=v` attributes of a message, in order.
fn attrs(msg: &str) -> impl Iterator<Item = (char, &str)> {
    msg.split(',').filter_map(|a| {
        let mut c = a.chars();
        let k = c.next()?;
        a.get(1..)?.strip_prefix('=').map(|v| (k, v))
    })
}

fn attr(msg: &str, key: char) -> Option<&str> {
    attrs(msg).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// A user name as SCRAM writes it (`,` and `=` escaped).
fn escape(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// The client side: [`ScramClient::first`], then [`ScramClient::finish`] on the server's
/// first message, then [`ScramClient::verify`] on its final one.
pub struct ScramClient {
    mech: Scram,
    user: String,
    password: String,
    nonce: String,
    /// Set by `finish`: the server signature to expect.
    expected: Option<Vec<u8>>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("mech", &self.mech)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A client for `user` with `password`.
    pub fn new(mech: Scram, user: &str, password: &str) -> Self {
        ScramClient {
            mech,
            user: user.to_owned(),
            password: password.to_owned(),
            nonce: nonce(),
            expected: None,
        }
    }

    fn first_bare(&self) -> String {
        format!("n={},r={}", escape(&self.user), self.nonce)
    }

    /// The client-first message.
    pub fn first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare()).into_bytes()
    }

    /// The client-final message answering the server-first message.
    pub fn finish(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let sf = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("utf-8"))?;
        if let Some(e) = attr(sf, 'e') {
            return Err(ScramError::Refused(e.to_owned()));
        }
        let nonce = attr(sf, 'r').ok_or(ScramError::Malformed("no nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Server("its nonce does not extend ours"));
        }
        let salt = attr(sf, 's')
            .and_then(|s| B64.decode(s).ok())
            .ok_or(ScramError::Malformed("salt"))?;
        let iterations = attr(sf, 'i')
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|i| (ITERATIONS..=MAX_ITERATIONS).contains(i))
            .and_then(NonZeroU32::new)
            .ok_or(ScramError::Malformed("iterations (4096 to 16384)"))?;
        let salted = self.mech.salted(&self.password, &salt, iterations);
        let client_key = self.mech.hmac(&salted, b"Client Key");
        let stored_key = self.mech.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{},{sf},{without_proof}", self.first_bare());
        let signature = self.mech.hmac(&stored_key, auth.as_bytes());
        let proof = xor(&client_key, &signature);
        let server_key = self.mech.hmac(&salted, b"Server Key");
        self.expected = Some(self.mech.hmac(&server_key, auth.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server knew the password too.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let sf = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("utf-8"))?;
        if let Some(e) = attr(sf, 'e') {
            return Err(ScramError::Refused(e.to_owned()));
        }
        let v = attr(sf, 'v')
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramError::Malformed("no server signature"))?;
        match &self.expected {
            Some(e) if *e == v => Ok(()),
            _ => Err(ScramError::Server("wrong server signature")),
        }
    }
}

/// A user's keys as the server keeps them.
#[derive(Clone, PartialEq, Eq)]
struct Keys {
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// Keys derived once per (mechanism, user, password) in this process: PBKDF2 is the
/// expensive part of an exchange (4096 HMACs), and a connection storm should not pay it
/// per connection.
fn keys_for(mech: Scram, user: &str, password: &str) -> Keys {
    type Cache = Mutex<HashMap<(Scram, String, String), Keys>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (mech, user.to_owned(), password.to_owned());
    if let Some(k) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return k.clone();
    }
    let salt = random().to_vec();
    let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
    let salted = mech.salted(password, &salt, iterations);
    let k = Keys {
        stored_key: mech.hash(&mech.hmac(&salted, b"Client Key")),
        server_key: mech.hmac(&salted, b"Server Key"),
        salt,
    };
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, k.clone());
    k
}

/// The server side after the client-first message: [`ScramServer::start`], then
/// [`ScramServer::finish`] on the client-final message.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramServer {
    mech: Scram,
    user: String,
    /// client-first-bare + "," + server-first.
    auth_prefix: String,
    nonce: String,
    keys: Keys,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramServer")
            .field("mech", &self.mech)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Reads the client-first message; `password` looks a user's password up. Returns
    /// the state and the server-first message.
    pub fn start(
        mech: Scram,
        client_first: &[u8],
        password: impl Fn(&str) -> Option<String>,
    ) -> Result<(ScramServer, Vec<u8>), ScramError> {
        let cf = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("utf-8"))?;
        // gs2 header: no channel binding ("n" or "y"), an optional authzid, then the bare
        // message.
        let mut parts = cf.splitn(3, ',');
        let (Some(cb), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(ScramError::Malformed("gs2 header"));
        };
        if cb != "n" && cb != "y" {
            return Err(ScramError::Malformed("channel binding is not supported"));
        }
        if bare.starts_with("m=") {
            return Err(ScramError::Malformed("mandatory extension"));
        }
        let user = attr(bare, 'n')
            .and_then(unescape)
            .filter(|u| !u.is_empty())
            .ok_or(ScramError::Malformed("user name"))?;
        if let Some(a) = authzid.strip_prefix("a=") {
            if unescape(a).as_deref() != Some(user.as_str()) {
                return Err(ScramError::Malformed(
                    "authorization id differs from the user",
                ));
            }
        } else if !authzid.is_empty() {
            return Err(ScramError::Malformed("gs2 header"));
        }
        let client_nonce = attr(bare, 'r')
            .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_graphic() && b != b','))
            .ok_or(ScramError::Malformed("nonce"))?;
        let Some(pw) = password(&user) else {
            return Err(ScramError::UnknownUser(user));
        };
        let keys = keys_for(mech, &user, &pw);
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(&keys.salt));
        let state = ScramServer {
            mech,
            auth_prefix: format!("{bare},{server_first}"),
            user,
            nonce,
            keys,
        };
        Ok((state, server_first.into_bytes()))
    }

    /// Checks the client-final message; returns the authenticated user and the
    /// server-final message.
    pub fn finish(&self, client_final: &[u8]) -> Result<(String, Vec<u8>), ScramError> {
        let cf = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("utf-8"))?;
        let (without_proof, proof) = cf
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let binding = attr(without_proof, 'c')
            .and_then(|c| B64.decode(c).ok())
            .ok_or(ScramError::Malformed("channel binding"))?;
        if !(binding.starts_with(b"n,") || binding.starts_with(b"y,")) {
            return Err(ScramError::Malformed("channel binding"));
        }
        // librdkafka sends its own nonce again before ours ("r=<client><client><server>");
        // Kafka accepts any nonce that ends with the server's, and so do we: the
        // AuthMessage covers what the client sent.
        if !attr(without_proof, 'r').is_some_and(|r| r.ends_with(&self.nonce)) {
            return Err(ScramError::Malformed("nonce differs"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof"))?;
        let auth = format!("{},{without_proof}", self.auth_prefix);
        let signature = self.mech.hmac(&self.keys.stored_key, auth.as_bytes());
        if proof.len() != signature.len()
            || !constant_time_eq(
                &self.mech.hash(&xor(&proof, &signature)),
                &self.keys.stored_key,
            )
        {
            return Err(ScramError::BadProof(self.user.clone()));
        }
        let v = self.mech.hmac(&self.keys.server_key, auth.as_bytes());
        Ok((
            self.user.clone(),
            format!("v={}", B64.encode(v)).into_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(u: &str) -> Option<String> {
        (u == "al,i=ce").then(|| "pencil".to_owned())
    }

    #[test]
    fn client_and_server_agree_and_refuse_a_wrong_password() {
        for mech in [Scram::Sha256, Scram::Sha512] {
            let mut c = ScramClient::new(mech, "al,i=ce", "pencil");
            let (s, first) = ScramServer::start(mech, &c.first(), users).unwrap();
            let (user, last) = s.finish(&c.finish(&first).unwrap()).unwrap();
            assert_eq!(user, "al,i=ce");
            c.verify(&last).unwrap();
            assert!(c.verify(b"v=AAAA").is_err());

            let mut bad = ScramClient::new(mech, "al,i=ce", "pencil2");
            let (s, first) = ScramServer::start(mech, &bad.first(), users).unwrap();
            let e = s.finish(&bad.finish(&first).unwrap()).unwrap_err();
            assert_eq!(e, ScramError::BadProof("al,i=ce".into()));

            let nobody = ScramClient::new(mech, "bob", "pencil");
            let e = ScramServer::start(mech, &nobody.first(), users).unwrap_err();
            assert_eq!(e, ScramError::UnknownUser("bob".into()));
        }
    }

    /// RFC 7677's SCRAM-SHA-256 example, from the client's side: fixed nonce, the
    /// server's salt and iterations, the proof and server signature it lists.
    #[test]
    fn rfc_7677_example() {
        let mut c = ScramClient::new(Scram::Sha256, "user", "pencil");
        c.nonce = "rOprNGfwEbeRWgbNEkqO".into();
        assert_eq!(c.first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = c.finish(server_first).unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            &b""[..],
            b"n,,",
            b"p=tls-unique,,n=u,r=x",
            b"n,,n=,r=x",
            b"n,,n=u",
            b"n,,m=ext,n=u,r=x",
            b"n,a=other,n=al=2Ci=3Dce,r=x",
            b"n,,n=a=ZZ,r=x",
            b"\xff",
        ] {
            assert!(
                ScramServer::start(Scram::Sha256, bad, users).is_err(),
                "{bad:?}"
            );
        }
        let c = ScramClient::new(Scram::Sha256, "al,i=ce", "pencil");
        let (s, _) = ScramServer::start(Scram::Sha256, &c.first(), users).unwrap();
        for bad in [
            &b""[..],
            b"c=biws,r=x,p=AAAA",
            b"c=biws",
            b"c=biws,r=x,p=!!",
        ] {
            assert!(s.finish(bad).is_err(), "{bad:?}");
        }
        let mut c = ScramClient::new(Scram::Sha256, "u", "p");
        assert!(c.finish(b"r=other,s=AAAA,i=4096").is_err());
        let n = c.nonce.clone();
        assert!(c
            .finish(format!("r={n}x,s=AAAA,i=100000000").as_bytes())
            .is_err());
        assert!(matches!(
            c.finish(b"e=invalid-proof"),
            Err(ScramError::Refused(_))
        ));
    }
}
