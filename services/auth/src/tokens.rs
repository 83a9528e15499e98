//! Opaque tokens: 32 random bytes, hex, behind a prefix that says what they are (`sat_` access,
//! `srt_` refresh). Only their SHA-256 is stored, so a copy of the keyspace signs nobody in.

use sha2::{Digest, Sha256};

/// Prefix of access tokens.
pub const ACCESS_PREFIX: &str = "sat_";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "srt_";

/// A new token with `prefix`.
pub fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// What is stored of a token: the hex SHA-256 of it.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_stored_only_as_hashes() {
        let a = new_token(ACCESS_PREFIX);
        let b = new_token(ACCESS_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with("sat_") && a.len() == 4 + 64);
        assert_eq!(hash(&a).len(), 64);
        assert!(!hash(&a).contains(&a[4..]));
    }
}
