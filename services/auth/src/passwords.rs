//! Password hashes: argon2id with the crate's defaults (19 MiB, 2 passes, OWASP's minimum),
//! a random salt each, stored as PHC strings. Hashing runs off the async runtime.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sterling_template::{Error, Result};

/// Shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted, in characters (hashing cost must not be the caller's to
/// choose: at most 1 KiB of UTF-8).
pub const MAX_PASSWORD_CHARS: usize = 256;

/// A password within bounds, or `bad_request.password`.
pub fn checked(password: &str) -> Result<&str> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(Error::bad_request(
            "password",
            format!("a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    Ok(password)
}

/// Whether `password` is too long to be worth hashing.
pub fn too_long(password: &str) -> bool {
    password.len() > 4 * MAX_PASSWORD_CHARS
}

/// The argon2id PHC string of `password`.
pub async fn hash(password: &str) -> Result<String> {
    let password = password.to_string();
    blocking(move || {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .map_err(|e| Error::internal(format!("salt: {e}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(format!("argon2: {e}")))
    })
    .await
}

/// Whether `password` matches the PHC string `stored`.
pub async fn verify(password: &str, stored: &str) -> Result<bool> {
    let (password, stored) = (password.to_string(), stored.to_string());
    blocking(move || {
        let parsed = PasswordHash::new(&stored)
            .map_err(|e| Error::internal(format!("stored password hash: {e}")))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::internal(format!("password hashing stopped: {e}")))?
}
