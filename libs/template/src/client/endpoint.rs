//! One endpoint of a service: a lazily connected HTTP/2 channel, with outlier ejection.
//!
//! An endpoint that fails `eject_after_failures` calls in a row (transport errors, or gRPC
//! UNKNOWN / INTERNAL / UNAVAILABLE) reports itself not ready for a cool-down that doubles with
//! each ejection (up to 30 s), so the balancer sends nothing to it; after the cool-down it is
//! re-admitted on probation: its next failure ejects it again, its next success clears its
//! record. No more than `max_ejected_fraction` of a
//! service's endpoints are ejected at once, so a bad deploy cannot eject everything.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Uri};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::Service;

use super::BoxError;
use super::policy::ClientPolicy;

/// A unary call with its body buffered, so it can be sent more than once (retries, hedges).
#[derive(Debug, Clone)]
pub struct Call {
    /// `/package.Service/Method`.
    pub uri: Uri,
    /// gRPC metadata.
    pub headers: HeaderMap,
    /// The encoded request message, framed.
    pub body: Bytes,
}

impl Call {
    /// The call as an HTTP/2 request.
    pub fn into_http(self) -> http::Request<Body> {
        let mut request = http::Request::new(Body::new(http_body_util::Full::new(self.body)));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri;
        *request.headers_mut() = self.headers;
        *request.version_mut() = http::Version::HTTP_2;
        request
    }
}

/// The gRPC status code in a response's headers (trailers-only responses carry it there).
pub fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Ejection bookkeeping shared by the endpoints of one service.
#[derive(Debug)]
pub struct EjectionGroup {
    service: Arc<str>,
    total: AtomicUsize,
    ejected: AtomicUsize,
    ejections: metrics::Counter,
}

impl EjectionGroup {
    /// A group for `service`; its ejections counter exists from now, at 0.
    pub fn new(service: Arc<str>) -> Self {
        EjectionGroup {
            ejections: metrics::counter!("sterling_client_ejections_total", "service" => service.to_string()),
            service,
            total: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
        }
    }

    /// The service whose endpoints these are.
    pub fn service(&self) -> &str {
        &self.service
    }
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

/// One endpoint, as the balancer sees it.
pub struct EndpointService {
    channel: Channel,
    address: String,
    health: Arc<Mutex<Health>>,
    group: Arc<EjectionGroup>,
    policy: Arc<ClientPolicy>,
    cool_down: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl EndpointService {
    /// An endpoint at `host:port`, connected on first use and kept alive.
    pub fn new(
        address: &str,
        group: Arc<EjectionGroup>,
        policy: Arc<ClientPolicy>,
    ) -> Result<Self, BoxError> {
        let channel = Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        group.total.fetch_add(1, Ordering::Relaxed);
        Ok(EndpointService {
            channel,
            address: address.to_string(),
            health: Arc::default(),
            group,
            policy,
            cool_down: None,
        })
    }
}

impl Drop for EndpointService {
    fn drop(&mut self) {
        self.group.total.fetch_sub(1, Ordering::Relaxed);
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if health.ejected_until.is_some() {
            self.group.ejected.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn record(
    health: &Mutex<Health>,
    group: &EjectionGroup,
    policy: &ClientPolicy,
    address: &str,
    failed: bool,
) {
    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
    if !failed {
        h.consecutive_failures = 0;
        return;
    }
    h.consecutive_failures += 1;
    if h.consecutive_failures < policy.eject_after_failures || h.ejected_until.is_some() {
        return;
    }
    let total = group.total.load(Ordering::Relaxed);
    let allowed = (total as f32 * policy.max_ejected_fraction).floor() as usize;
    if group.ejected.load(Ordering::Relaxed) + 1 > allowed {
        return;
    }
    let factor = 1u32 << h.ejections.min(5);
    let time = (policy.eject_base * factor).min(Duration::from_secs(30));
    h.ejected_until = Some(Instant::now() + time);
    h.ejections += 1;
    group.ejected.fetch_add(1, Ordering::Relaxed);
    group.ejections.increment(1);
    tracing::warn!(service = %group.service, address, ?time, "endpoint ejected after consecutive failures");
}

impl Service<Call> for EndpointService {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let until = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ejected_until;
        if let Some(until) = until {
            if Instant::now() < until {
                let deadline = tokio::time::Instant::from_std(until);
                let sleep = self
                    .cool_down
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            if h.ejected_until.take().is_some() {
                // On probation: one more failure ejects it again (for longer); one success
                // clears its record.
                h.consecutive_failures = self.policy.eject_after_failures.saturating_sub(1);
                self.group.ejected.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(service = %self.group.service, address = %self.address, "endpoint re-admitted");
            }
            self.cool_down = None;
        }
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let future = self.channel.call(call.into_http());
        let (health, group, policy, address) = (
            self.health.clone(),
            self.group.clone(),
            self.policy.clone(),
            self.address.clone(),
        );
        Box::pin(async move {
            let result = future.await;
            let failed = match &result {
                Ok(response) => matches!(grpc_status(response.headers()), Some(2 | 13 | 14)),
                Err(_) => true,
            };
            record(&health, &group, &policy, &address, failed);
            result.map_err(Into::into)
        })
    }
}
