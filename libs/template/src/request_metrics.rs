//! Per-method request metrics with their handles registered once, so that recording a call is
//! a map lookup and two atomic updates rather than building label sets every time.
//!
//! Series: `sterling_<side>_requests_total{service, [caller,] method, code|status}` and
//! `sterling_<side>_request_duration_seconds{service, [caller,] method}`. On gRPC the outcome
//! label is `code`, the canonical status name (`OK`, `NOT_FOUND`, ...); on HTTP it is
//! `status`, the HTTP status (`200`, `404`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram, Label};

/// Requests and durations of one side (client or server) of one service, by method and outcome.
pub(crate) struct RequestMetrics {
    side: &'static str,
    labels: Vec<Label>,
    methods: RwLock<HashMap<String, Arc<MethodMetrics>>>,
}

/// The handles of one method.
pub(crate) struct MethodMetrics {
    requests: String,
    labels: Vec<Label>,
    duration: Histogram,
    /// By outcome value; the label name (`code` or `status`) is fixed per side and protocol.
    by_outcome: Mutex<HashMap<String, Counter>>,
}

impl RequestMetrics {
    /// Metrics of `side` (`server` or `client`) labelled with `labels` (service, caller).
    pub(crate) fn new(side: &'static str, labels: Vec<(&'static str, String)>) -> Self {
        RequestMetrics {
            side,
            labels: labels.into_iter().map(|(k, v)| Label::new(k, v)).collect(),
            methods: RwLock::default(),
        }
    }

    /// The handles of `method`, registered on first use.
    pub(crate) fn method(&self, method: &str) -> Arc<MethodMetrics> {
        if let Some(m) = self
            .methods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(method)
        {
            return m.clone();
        }
        let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
        methods
            .entry(method.to_string())
            .or_insert_with(|| {
                let mut labels = self.labels.clone();
                labels.push(Label::new("method", method.to_string()));
                let name = format!("sterling_{}_request_duration_seconds", self.side);
                Arc::new(MethodMetrics {
                    requests: format!("sterling_{}_requests_total", self.side),
                    duration: metrics::histogram!(name, labels.iter()),
                    labels,
                    by_outcome: Mutex::default(),
                })
            })
            .clone()
    }
}

impl MethodMetrics {
    /// Records one call that ended with `outcome` (`("code", "OK")`, `("status", "404")`).
    pub(crate) fn record(&self, outcome: (&'static str, &str), elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
        let mut by_outcome = self.by_outcome.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = by_outcome.get(outcome.1) {
            counter.increment(1);
            return;
        }
        let mut labels = self.labels.clone();
        labels.push(Label::new(outcome.0, outcome.1.to_string()));
        let counter = metrics::counter!(self.requests.clone(), labels.iter());
        counter.increment(1);
        by_outcome.insert(outcome.1.to_string(), counter);
    }
}

/// The canonical name of a gRPC status code (`OK`, `UNAVAILABLE`, ...).
pub fn grpc_code_name(code: i32) -> &'static str {
    use tonic::Code;
    match Code::from_i32(code) {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
