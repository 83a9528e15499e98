//! Signatures of webhooks, both ways (processor to card-api, webhooks to customers): `Sterling-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where the
//! MAC is over `"<t>.<raw body>"` with the shared secret. The timestamp inside the MAC lets a
//! receiver refuse replays older than the tolerance.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "sterling-signature";

/// The processor secret of development: card-api's default, and the development terminal's.
pub const DEVELOPMENT_SECRET: &str = "sterling-development-secret";

/// How far a signature's timestamp may be from now.
pub const TOLERANCE_SECONDS: i64 = 300;

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No header, or not `t=...,v1=...`.
    Malformed,
    /// The timestamp is outside the tolerance.
    Stale,
    /// The MAC does not match.
    Mismatch,
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// The header value signing `body` at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

/// Checks a header value against `body` at time `now` (unix seconds), in constant time.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => {
                signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // `abs_diff` cannot overflow, whatever timestamp an attacker sends.
    if now.abs_diff(timestamp) > TOLERANCE_SECONDS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let expected = mac(secret, timestamp, body);
    let matches = signatures
        .iter()
        .any(|s| subtle::ConstantTimeEq::ct_eq(s.as_slice(), expected.as_slice()).into());
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let header = sign(b"secret", 1_700_000_000, b"{\"a\":1}");
        assert_eq!(
            verify(b"secret", &header, b"{\"a\":1}", 1_700_000_010),
            Ok(())
        );
        assert_eq!(
            verify(b"other", &header, b"{\"a\":1}", 1_700_000_010),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", &header, b"{\"a\":2}", 1_700_000_010),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", &header, b"{\"a\":1}", 1_700_000_000 + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(b"secret", "nonsense", b"", 0),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(b"secret", "t=1,v1=zz", b"", 1),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn matches_an_independent_hmac() {
        // HMAC-SHA256(key="key", "1.body") computed independently of this module.
        let header = sign(b"key", 1, b"body");
        let expected = {
            let mut m = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
            m.update(b"1.body");
            hex::encode(m.finalize().into_bytes())
        };
        assert_eq!(header, format!("t=1,v1={expected}"));
    }
}
