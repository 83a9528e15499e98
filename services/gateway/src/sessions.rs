//! Who a request's access token belongs to: asked of auth, and remembered briefly so that a
//! burst of requests costs auth one call. A token signed out through this gateway is
//! forgotten at once; through another instance, it works here for at most the cache time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sterling_proto::auth::v1::IntrospectRequest;
use sterling_proto::auth::v1::auth_client::AuthClient;
use sterling_template::client::GrpcChannel;
use sterling_template::{Error, Result};

/// Tokens remembered before the cache starts over.
const CACHE_LIMIT: usize = 10_000;

/// Access tokens checked with auth.
#[derive(Clone)]
pub struct Sessions {
    auth: AuthClient<GrpcChannel>,
    cache_for: Duration,
    /// Token -> (customer, remembered until).
    known: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

/// The access token of an `Authorization: Bearer` header, or `unauthorized.token`.
pub fn bearer(headers: &http::HeaderMap) -> Result<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::unauthorized("token", "send Authorization: Bearer <access token>"))
}

impl Sessions {
    /// Checks tokens with `auth`, remembering an answer for `cache_for`.
    pub fn new(auth: AuthClient<GrpcChannel>, cache_for: Duration) -> Self {
        Sessions {
            auth,
            cache_for,
            known: Arc::default(),
        }
    }

    /// The auth client.
    pub fn auth(&self) -> AuthClient<GrpcChannel> {
        self.auth.clone()
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The customer `token` belongs to, or `unauthorized.token`.
    pub async fn customer(&self, token: &str) -> Result<String> {
        if let Some((customer, until)) = self.known().get(token)
            && Instant::now() < *until
        {
            return Ok(customer.clone());
        }
        let principal = self
            .auth
            .clone()
            .introspect(IntrospectRequest {
                access_token: token.to_string(),
            })
            .await
            .map_err(Error::from)?
            .into_inner();
        let mut known = self.known();
        if known.len() >= CACHE_LIMIT {
            known.clear();
        }
        // Remembered for the cache time, and never past the token's own expiry.
        let left = principal.expires_at_ms - sterling_storage::now_millis();
        let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
        known.insert(
            token.to_string(),
            (
                principal.customer_id.clone(),
                Instant::now() + left.min(self.cache_for),
            ),
        );
        Ok(principal.customer_id)
    }

    /// Forgets `token` (signed out).
    pub fn forget(&self, token: &str) {
        self.known().remove(token);
    }
}
