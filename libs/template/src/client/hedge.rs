//! Hedging: reads slower than a recent latency percentile are sent again; the first answer
//! wins and the other is dropped (which cancels it).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::Counter;
use tonic::body::Body;

use super::balance::SharedBalancer;
use super::endpoint::Call;
use super::{BoxError, status_error};
use crate::error::Error;

/// Recent latencies of successful calls, for the hedging delay.
pub(crate) struct LatencyTracker {
    samples: Mutex<std::collections::VecDeque<u64>>,
    threshold_us: AtomicU64,
    recorded: AtomicU64,
    percentile: f32,
    min_samples: u64,
}

/// Samples kept for the hedging percentile.
const LATENCY_WINDOW: usize = 512;

impl LatencyTracker {
    pub(crate) fn new(percentile: f32, min_samples: u64) -> Self {
        LatencyTracker {
            samples: Mutex::new(std::collections::VecDeque::with_capacity(LATENCY_WINDOW)),
            threshold_us: AtomicU64::new(u64::MAX),
            recorded: AtomicU64::new(0),
            percentile,
            min_samples,
        }
    }

    pub(crate) fn record(&self, latency: Duration) {
        let n = self.recorded.fetch_add(1, Ordering::Relaxed) + 1;
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == LATENCY_WINDOW {
            samples.pop_front();
        }
        samples.push_back(latency.as_micros() as u64);
        if n >= self.min_samples && (n.is_multiple_of(32) || n == self.min_samples) {
            let mut sorted: Vec<u64> = samples.iter().copied().collect();
            sorted.sort_unstable();
            let rank = ((sorted.len() as f32 * self.percentile) as usize).min(sorted.len() - 1);
            self.threshold_us.store(sorted[rank], Ordering::Relaxed);
        }
    }

    /// How long to wait before hedging, once enough latencies are known.
    pub(crate) fn hedge_delay(&self) -> Option<Duration> {
        match self.threshold_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us.max(100))),
        }
    }
}

/// Sends one attempt within `deadline`; with `hedge_after`, sends a copy if no answer came by
/// then and takes whichever answers first (the other is dropped, which cancels it). One timer
/// serves both the hedge and the deadline.
pub(crate) async fn send(
    balancer: &SharedBalancer,
    call: Call,
    hedge_after: Option<Duration>,
    deadline: Option<Instant>,
    service: &str,
    hedges: &Counter,
) -> std::result::Result<http::Response<Body>, BoxError> {
    let timed_out = || {
        Err(status_error(Error::timeout(format!(
            "{service} did not answer in time"
        ))))
    };
    let hedge_at = hedge_after
        .map(|d| Instant::now() + d)
        .filter(|at| deadline.is_none_or(|d| *at < d));
    let Some(hedge_at) = hedge_at else {
        return match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), balancer.send(call))
                .await
                .unwrap_or_else(|_| timed_out()),
            None => balancer.send(call).await,
        };
    };
    let mut copy = Some(call.clone());
    let first = balancer.send(call);
    tokio::pin!(first);
    let mut second = None;
    let timer = tokio::time::sleep_until(hedge_at.into());
    tokio::pin!(timer);
    let mut timer_armed = true;
    loop {
        tokio::select! {
            result = &mut first => return result,
            result = async { second.as_mut().expect("guarded").await }, if second.is_some() => {
                return result;
            }
            _ = &mut timer, if timer_armed => {
                if let Some(copy) = copy.take() {
                    hedges.increment(1);
                    second = Some(Box::pin(balancer.send(copy)));
                    match deadline {
                        Some(d) => timer.as_mut().reset(d.into()),
                        None => timer_armed = false,
                    }
                } else {
                    return timed_out();
                }
            }
        }
    }
}
