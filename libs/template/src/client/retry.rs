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

/// The pause before attempt `attempt + 1`: full jitter under a ceiling that doubles per
/// attempt from the policy's base up to its maximum.
pub(crate) fn backoff(policy: &ClientPolicy, attempt: u32) -> Duration {
    let ceiling =
        (policy.backoff_base * (1 << (attempt.saturating_sub(1)).min(10))).min(policy.backoff_max);
    Duration::from_micros(rand::rng().random_range(0..=ceiling.as_micros() as u64))
}
