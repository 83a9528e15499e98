//! Per-method request metrics with their handles registered once, so that recording a call is
//! a map lookup and two atomic updates rather than building label sets every time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram};

/// Requests and durations of one side (client or server) of one service, by method and code.
pub(crate) struct RequestMetrics {
    side: &'static str,
    service: Arc<str>,
    methods: RwLock<HashMap<String, Arc<MethodMetrics>>>,
}

/// The handles of one method.
pub(crate) struct MethodMetrics {
    side: &'static str,
    service: Arc<str>,
    method: String,
    duration: Histogram,
    by_code: Mutex<HashMap<i32, Counter>>,
}

impl RequestMetrics {
    /// Metrics named `sterling_<side>_requests_total` and
    /// `sterling_<side>_request_duration_seconds`, labelled with `service`.
    pub(crate) fn new(side: &'static str, service: Arc<str>) -> Self {
        RequestMetrics {
            side,
            service,
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
                let name = format!("sterling_{}_request_duration_seconds", self.side);
                Arc::new(MethodMetrics {
                    side: self.side,
                    service: self.service.clone(),
                    method: method.to_string(),
                    duration: metrics::histogram!(name, "service" => self.service.to_string(), "method" => method.to_string()),
                    by_code: Mutex::default(),
                })
            })
            .clone()
    }
}

impl MethodMetrics {
    /// Records one call that ended with gRPC `code` (-1 for a transport failure).
    pub(crate) fn record(&self, code: i32, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
        let mut by_code = self.by_code.lock().unwrap_or_else(|p| p.into_inner());
        by_code
            .entry(code)
            .or_insert_with(|| {
                let name = format!("sterling_{}_requests_total", self.side);
                let code = if code < 0 { "transport".to_string() } else { code.to_string() };
                metrics::counter!(name, "service" => self.service.to_string(), "method" => self.method.clone(), "code" => code)
            })
            .increment(1);
    }
}
