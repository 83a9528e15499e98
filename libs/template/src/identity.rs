//! Who is calling. Every gRPC call between Sterling's processes carries its caller's identity:
//! a token the bank's identity authority signed with Ed25519, naming one service (or the
//! operator) and when it expires (`sst1.<caller>.<expiry>.<sig>`), sent in the
//! `sterling-identity` header (which HTTP/2 compresses to a few bytes after a connection's
//! first call) or, from tools such as grpcurl, as `authorization: Bearer <token>`.
//! Every service says which callers may call which of its methods ([`crate::server::access`]);
//! a process that can merely reach a port, with no token, is refused.
//!
//! Where the authority's key lives:
//! - in development (`make run`, tests) it is a file under the data directory, created on first
//!   start (`identity.key`, or `STERLING_IDENTITY_KEY_FILE`); every process of the bank reads it and signs its own
//!   token;
//! - in a deployment the key stays with whoever deploys: a process is given only the public
//!   key (`STERLING_IDENTITY_PUBLIC_KEY`) and its own token (`STERLING_IDENTITY_TOKEN`),
//!   minted with `sterling identity mint <service>`. It can prove who it is and check others,
//!   never speak for another service.
//!
//! Verified tokens are cached (bounded), so checking a caller costs a lookup, not a signature
//! verification, on every call after its first.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use http::HeaderValue;

use crate::error::{Error, Result};

/// The caller name of the operator's tools (`sterling` commands, the reconciler).
pub const OPERATOR: &str = "operator";

/// The caller name of the gateway, the only caller of the public API's services.
pub const GATEWAY: &str = "gateway";

/// Header by which the gateway tells a public API service which customer it authenticated.
/// Only the gateway's calls are believed: a client cannot reach those services directly.
pub const CUSTOMER_HEADER: &str = "x-sterling-customer";

/// The customer the gateway authenticated for a request to a public API service, in the
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer(pub Arc<str>);

impl Customer {
    /// The customer's id (`cus_...`).
    pub fn id(&self) -> &str {
        &self.0
    }
}

/// Header carrying a caller's identity token between the bank's processes.
pub const IDENTITY_HEADER: &str = "sterling-identity";

/// Version prefix of a service identity token.
pub const TOKEN_PREFIX: &str = "sst1";

/// How long a token a process signs for itself lives; it signs a fresh one at half-life.
pub const SELF_SIGNED_TTL: Duration = Duration::from_secs(24 * 3600);

/// Verified tokens kept before the cache starts over.
const VERIFIED_CACHE_LIMIT: usize = 4096;

/// The authenticated caller of a request, put in the request's extensions by the access layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Arc<str>);

impl Caller {
    /// The caller's service name, or [`OPERATOR`].
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// Where this process's tokens come from.
#[derive(Clone)]
enum TokenSource {
    /// The authority's key: any identity can be signed (development, operator tools).
    Authority(Arc<SigningKey>),
    /// One token, given to the process (a deployment).
    Given(HeaderValue),
    /// Nothing to prove: this process can check callers but not call.
    Nobody,
}

/// The identity authority as this process knows it: how to check a caller's token, and the
/// token this process sends.
#[derive(Clone)]
pub struct Identity {
    verifying: VerifyingKey,
    signer: TokenSource,
    verified: Arc<Mutex<VerifiedTokens>>,
    signed: Arc<Mutex<SignedHeaders>>,
}

/// Tokens already verified: the caller each names and when it expires (unix seconds).
type VerifiedTokens = HashMap<String, (Arc<str>, i64)>;

/// Tokens this process signed, by caller, and when to sign a fresh one (unix seconds).
type SignedHeaders = HashMap<String, (HeaderValue, i64)>;

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn unauthenticated(why: &str) -> Error {
    Error::unauthorized("service_identity", why)
}

impl Identity {
    /// An authority over `key`: signs any identity, checks any token.
    pub fn authority(key: SigningKey) -> Identity {
        Identity {
            verifying: key.verifying_key(),
            signer: TokenSource::Authority(Arc::new(key)),
            verified: Arc::default(),
            signed: Arc::default(),
        }
    }

    /// The authority whose key is in `path` (hex of the 32-byte seed), created there (readable
    /// by its owner only) if the file does not exist.
    pub fn load_or_create(path: &Path) -> std::io::Result<Identity> {
        let invalid = |why: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {why}", path.display()),
            )
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim()).map_err(|_| invalid("not hex"))?;
                let seed: [u8; 32] = bytes.try_into().map_err(|_| invalid("not a 32-byte key"))?;
                Ok(Identity::authority(SigningKey::from_bytes(&seed)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
                if write_private(path, &hex::encode(key.to_bytes()))? {
                    Ok(Identity::authority(key))
                } else {
                    // Another process of the bank created it first: that key is the bank's.
                    Identity::load_or_create(path)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A process given only the authority's public key (hex) and, to call others, its own
    /// token.
    pub fn given(public_key: &str, token: Option<&str>) -> std::result::Result<Identity, String> {
        let bytes = hex::decode(public_key.trim()).map_err(|_| "not hex".to_string())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "not a 32-byte key".to_string())?;
        let verifying =
            VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 key".to_string())?;
        let signer = match token {
            Some(token) => TokenSource::Given(
                HeaderValue::try_from(token.trim())
                    .map_err(|_| "the token is not a header value".to_string())?,
            ),
            None => TokenSource::Nobody,
        };
        Ok(Identity {
            verifying,
            signer,
            verified: Arc::default(),
            signed: Arc::default(),
        })
    }

    /// The authority's public key, hex.
    pub fn public_key(&self) -> String {
        hex::encode(self.verifying.as_bytes())
    }

    /// A token naming `caller`, valid for `ttl`; only the authority can sign one.
    pub fn mint(&self, caller: &str, ttl: Duration) -> Result<String> {
        let TokenSource::Authority(key) = &self.signer else {
            return Err(Error::forbidden(
                "identity",
                "only the identity authority signs tokens",
            ));
        };
        if caller.is_empty()
            || !caller
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(Error::bad_request(
                "caller",
                "a caller is a service name: letters, digits and '-'",
            ));
        }
        let expires = now_secs().saturating_add(ttl.as_secs() as i64);
        let signed = format!("{TOKEN_PREFIX}.{caller}.{expires}");
        let signature = key.sign(signed.as_bytes());
        Ok(format!("{signed}.{}", hex::encode(signature.to_bytes())))
    }

    /// The token this process sends when calling as `caller` ([`IDENTITY_HEADER`]): one
    /// signed for it (renewed at half-life), or the one token it was given. `None` if it has
    /// none.
    pub fn token_for(&self, caller: &str) -> Option<HeaderValue> {
        match &self.signer {
            TokenSource::Given(token) => Some(token.clone()),
            TokenSource::Nobody => None,
            TokenSource::Authority(_) => {
                let now = now_secs();
                let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((token, renew_at)) = signed.get(caller)
                    && now < *renew_at
                {
                    return Some(token.clone());
                }
                let token = HeaderValue::try_from(self.mint(caller, SELF_SIGNED_TTL).ok()?).ok()?;
                let renew_at = now + SELF_SIGNED_TTL.as_secs() as i64 / 2;
                signed.insert(caller.to_string(), (token.clone(), renew_at));
                Some(token)
            }
        }
    }

    /// The same token as an `authorization: Bearer` value (for tools and tests).
    pub fn header_for(&self, caller: &str) -> Option<HeaderValue> {
        let token = self.token_for(caller)?;
        HeaderValue::try_from(format!("Bearer {}", token.to_str().ok()?)).ok()
    }

    /// The caller a request's headers prove ([`IDENTITY_HEADER`], else `authorization:
    /// Bearer`), or `unauthenticated.service_identity`.
    pub fn verify_headers(&self, headers: &http::HeaderMap) -> Result<Caller> {
        if let Some(token) = headers.get(IDENTITY_HEADER) {
            let token = token
                .to_str()
                .map_err(|_| unauthenticated("the service identity token is malformed"))?;
            return self.verify(token.trim());
        }
        self.verify_header(headers.get(http::header::AUTHORIZATION))
    }

    /// The caller an `authorization` header proves, or `unauthenticated.service_identity`.
    pub fn verify_header(&self, header: Option<&HeaderValue>) -> Result<Caller> {
        let header = header.ok_or_else(|| {
            unauthenticated("no service identity: send authorization: Bearer <token>")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| unauthenticated("authorization is not a bearer token"))?;
        self.verify(token.trim())
    }

    /// The caller a token proves, or `unauthenticated.service_identity`.
    pub fn verify(&self, token: &str) -> Result<Caller> {
        let now = now_secs();
        {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((caller, expires)) = verified.get(token) {
                return if now < *expires {
                    Ok(Caller(caller.clone()))
                } else {
                    Err(unauthenticated("the service identity token has expired"))
                };
            }
        }
        let (caller, expires) = self.check_signature(token)?;
        if now >= expires {
            return Err(unauthenticated("the service identity token has expired"));
        }
        let caller: Arc<str> = Arc::from(caller);
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_CACHE_LIMIT {
            verified.clear();
        }
        verified.insert(token.to_string(), (caller.clone(), expires));
        Ok(Caller(caller))
    }

    fn check_signature<'t>(&self, token: &'t str) -> Result<(&'t str, i64)> {
        let malformed = || unauthenticated("the service identity token is malformed");
        let (signed, signature) = token.rsplit_once('.').ok_or_else(malformed)?;
        let mut parts = signed.split('.');
        let (Some(TOKEN_PREFIX), Some(caller), Some(expires), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let expires: i64 = expires.parse().map_err(|_| malformed())?;
        let signature: [u8; 64] = hex::decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(malformed)?;
        self.verifying
            .verify(signed.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| {
                unauthenticated("the service identity token is not signed by this bank")
            })?;
        Ok((caller, expires))
    }
}

/// Writes `text` to a new file at `path` that only its owner can read, whole or not at all:
/// written beside it, then linked into place. `false` if the file already existed.
fn write_private(path: &Path, text: &str) -> std::io::Result<bool> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let draft = path.with_extension(format!("draft-{}", uuid::Uuid::now_v7()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&draft).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&draft, path));
    let _ = std::fs::remove_file(&draft);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> Identity {
        Identity::authority(SigningKey::from_bytes(&[7; 32]))
    }

    #[test]
    fn a_minted_token_proves_its_caller() {
        let id = authority();
        let token = id.mint("card-processing", Duration::from_secs(60)).unwrap();
        assert_eq!(id.verify(&token).unwrap().name(), "card-processing");
        // From the cache, the same.
        assert_eq!(id.verify(&token).unwrap().name(), "card-processing");
        let header = id.header_for("ledger").unwrap();
        assert_eq!(id.verify_header(Some(&header)).unwrap().name(), "ledger");
    }

    #[test]
    fn tampered_expired_foreign_and_missing_tokens_are_refused() {
        let id = authority();
        let token = id.mint("fx", Duration::from_secs(60)).unwrap();
        let renamed = token.replacen(".fx.", ".ledger.", 1);
        let expired = id.mint("fx", Duration::ZERO).unwrap();
        let foreign = Identity::authority(SigningKey::from_bytes(&[8; 32]))
            .mint("fx", Duration::from_secs(60))
            .unwrap();
        for bad in [
            renamed.as_str(),
            &expired,
            &foreign,
            "",
            "sst1.fx",
            "garbage",
        ] {
            let e = id.verify(bad).unwrap_err();
            assert_eq!(e.code(), "unauthorized.service_identity", "{bad}");
        }
        assert!(id.verify_header(None).is_err());
        let basic = HeaderValue::from_static("Basic Zm9vOmJhcg==");
        assert!(id.verify_header(Some(&basic)).is_err());
    }

    #[test]
    fn a_process_given_a_public_key_checks_but_cannot_sign() {
        let id = authority();
        let token = id.mint("feed", Duration::from_secs(60)).unwrap();
        let given = Identity::given(&id.public_key(), Some(&token)).unwrap();
        assert_eq!(given.verify(&token).unwrap().name(), "feed");
        assert!(given.mint("ledger", Duration::from_secs(60)).is_err());
        // It speaks as what it was given, whatever it asks for.
        let header = given.header_for("ledger").unwrap();
        assert_eq!(given.verify_header(Some(&header)).unwrap().name(), "feed");
        assert!(Identity::given("zz", None).is_err());
    }

    #[test]
    fn the_key_file_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let first = Identity::load_or_create(&path).unwrap();
        let second = Identity::load_or_create(&path).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "only its owner reads the key");
        }
    }
}
