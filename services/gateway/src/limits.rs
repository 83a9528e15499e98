//! Rate limits (governor's GCRA): per client address on every request, per access token on
//! every authenticated one, and per email on sign-in (password guessing). Over the limit: 429
//! `rate_limited` with `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sterling_template::Error;

/// Requests allowed per second (and in a burst) for each kind of key.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    /// Per client address.
    pub per_address: NonZeroU32,
    /// Per access token.
    pub per_token: NonZeroU32,
    /// Sign-in attempts per email, per minute.
    pub sign_ins_per_minute: NonZeroU32,
}

/// The gateway's limiters.
pub struct Limits {
    address: DefaultKeyedRateLimiter<IpAddr>,
    token: DefaultKeyedRateLimiter<String>,
    sign_in: DefaultKeyedRateLimiter<String>,
}

/// A refusal: 429 with how long to wait.
pub struct Limited {
    /// The error (`rate_limited`).
    pub error: Error,
    /// Whole seconds to wait, at least 1.
    pub retry_after_s: u64,
}

fn refusal(until: governor::NotUntil<<DefaultClock as Clock>::Instant>, what: &str) -> Limited {
    let wait = until.wait_time_from(DefaultClock::default().now());
    Limited {
        error: Error::rate_limited(format!("too many requests {what}; slow down")),
        retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
}

impl Limits {
    /// Limiters with `settings`.
    pub fn new(settings: LimitSettings) -> Self {
        Limits {
            address: RateLimiter::keyed(Quota::per_second(settings.per_address)),
            token: RateLimiter::keyed(Quota::per_second(settings.per_token)),
            sign_in: RateLimiter::keyed(Quota::per_minute(settings.sign_ins_per_minute)),
        }
    }

    /// One request from `address`.
    pub fn address(&self, address: IpAddr) -> Result<(), Limited> {
        self.address
            .check_key(&address)
            .map_err(|u| refusal(u, "from this address"))
    }

    /// One request with `token`.
    pub fn token(&self, token: &str) -> Result<(), Limited> {
        self.token
            .check_key(&token.to_string())
            .map_err(|u| refusal(u, "with this token"))
    }

    /// One sign-in attempt for `email`.
    pub fn sign_in(&self, email: &str) -> Result<(), Limited> {
        self.sign_in
            .check_key(&email.trim().to_ascii_lowercase())
            .map_err(|u| refusal(u, "signing in to this account"))
    }

    /// Drops keys that are back to full capacity (bounded memory under many clients).
    pub fn shrink(&self) {
        self.address.retain_recent();
        self.token.retain_recent();
        self.sign_in.retain_recent();
    }
}
