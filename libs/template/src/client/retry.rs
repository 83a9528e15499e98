//! Retries: which outcomes may be sent again, and the jittered exponential backoff between
//! attempts.

use std::time::Duration;

use rand::Rng;
use tonic::body::Body;

use super::BoxError;
use super::endpoint::grpc_status;
use super::policy::ClientPolicy;

/// Whether an attempt's outcome may be retried: UNAVAILABLE (unless marked not retryable),
/// RESOURCE_EXHAUSTED marked retryable (a shed request), or a transport failure.
pub(crate) fn retryable_outcome(
    result: &std::result::Result<http::Response<Body>, BoxError>,
) -> bool {
    match result {
        Ok(response) => {
            let marked = response
                .headers()
                .get(crate::error::ERROR_RETRYABLE_HEADER)
                .and_then(|v| v.to_str().ok());
            match grpc_status(response.headers()) {
                Some(14) => marked != Some("false"),
                Some(8) => marked == Some("true"),
                _ => false,
            }
        }
        Err(e) => match e.downcast_ref::<tonic::Status>() {
            Some(status) => {
                status.code() == tonic::Code::Unavailable
                    && !status.message().contains("no live instance")
            }
            None => true,
        },
    }
}

/// How long a call whose connection could not be made keeps trying to make one, within its
/// deadline: a peer restarting, or its name not resolving for a moment while it comes back,
/// passes within it.
pub(crate) const CONNECT_WINDOW: Duration = Duration::from_secs(3);

/// The first pause before connecting again; it doubles up to [`RECONNECT_PAUSE_MAX`].
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// The longest pause before connecting again.
const RECONNECT_PAUSE_MAX: Duration = Duration::from_millis(500);

/// Whether an attempt failed before anything was sent: its connection could not be made (the
/// name did not resolve, the port refused it). Sending it again is safe whatever the method,
/// a write that has no idempotency key included.
pub(crate) fn never_sent(result: &std::result::Result<http::Response<Body>, BoxError>) -> bool {
    let Err(error) = result else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(error) = cause {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// The pause before connecting again after `failures` failed connections: full jitter under
/// a ceiling that doubles from 20 ms to 500 ms. The gateway connects again to API services on
/// the same schedule.
pub fn reconnect_pause(failures: u32) -> Duration {
    let ceiling =
        (RECONNECT_PAUSE * (1 << failures.saturating_sub(1).min(10))).min(RECONNECT_PAUSE_MAX);
    Duration::from_micros(rand::rng().random_range(0..=ceiling.as_micros() as u64))
}

/// The pause before attempt `attempt + 1`: full jitter under a ceiling that doubles per
/// attempt from the policy's base up to its maximum.
pub(crate) fn backoff(policy: &ClientPolicy, attempt: u32) -> Duration {
    let ceiling =
        (policy.backoff_base * (1 << (attempt.saturating_sub(1)).min(10))).min(policy.backoff_max);
    Duration::from_micros(rand::rng().random_range(0..=ceiling.as_micros() as u64))
}
