//! The service client: a channel to a service name with the whole list from the talks.
//!
//! `ctx.channel("cards").await?` gives a [`GrpcChannel`] for any generated client
//! (`CardsClient::new(channel)`). Under it:
//!
//! - **discovery and load balancing**: every live instance discovery reports (updated as they
//!   come and go) behind tower's power-of-two-choices balancer over peak-EWMA latency, so slow
//!   instances get less traffic;
//! - **failure detection and circuit breaking**: per-endpoint outlier ejection
//!   ([`endpoint`]);
//! - **timeouts and context propagation**: the request id, a child span of the trace, the hop
//!   count and a deadline (the caller's remaining deadline, capped per call) go on every call;
//!   a call with no time left or no instance fails at once;
//! - **retries**: only of retryable failures (UNAVAILABLE, transport errors) of methods that
//!   are safe to repeat ([`policy`]), with jittered exponential backoff inside the deadline and
//!   a retry budget (retries add at most a fraction of calls); a call that is itself a retry
//!   does not retry downstream, so retries never multiply across hops;
//! - **hedging**: reads slower than a recent latency percentile are sent again, the first
//!   answer wins and the other is cancelled;
//! - **connection pooling**: one HTTP/2 connection per endpoint, kept alive and reused;
//! - **cancellation**: dropping the call drops every attempt and resets its streams.

pub mod endpoint;
pub mod policy;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use http::HeaderValue;
use http_body_util::BodyExt;
use rand::Rng;
use tokio::sync::mpsc;
use tonic::body::Body;
use tower::Service;
use tower::balance::p2c::Balance;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::retry::budget::{Budget, TpsBudget};
use tracing::Instrument;

use self::endpoint::{Call, EjectionGroup, EndpointService, grpc_status};
use self::policy::{ClientPolicy, MethodKind, kind_of};
use crate::context::{
    ATTEMPT_HEADER, GRPC_TIMEOUT_HEADER, HOP_HEADER, REQUEST_ID_HEADER, RequestContext,
    TRACEPARENT_HEADER, format_grpc_timeout,
};
use crate::discovery::{Protocol, Registration, SharedDiscovery};
use crate::error::{Error, Result};
use crate::request_metrics::RequestMetrics;

/// Boxed error type of the channel (a `tonic::Status` inside for errors it makes itself).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Header by which a caller marks a plain write safe to retry.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

type Balancer = Balance<
    PeakEwmaDiscover<
        tokio_stream::wrappers::UnboundedReceiverStream<
            std::result::Result<Change<String, EndpointService>, Infallible>,
        >,
        CompleteOnResponse,
    >,
    Call,
>;

/// The balancer behind a lock: callers wait for a ready endpoint in turn, then send without
/// holding the lock (cheaper than a buffer task hop on every call).
#[derive(Clone)]
struct SharedBalancer(Arc<tokio::sync::Mutex<Balancer>>);

impl SharedBalancer {
    async fn send(&self, call: Call) -> std::result::Result<http::Response<Body>, BoxError> {
        let future = {
            let mut balancer = self.0.lock().await;
            futures::future::poll_fn(|cx| balancer.poll_ready(cx)).await?;
            balancer.call(call)
        };
        future.await
    }
}

/// Recent latencies of successful calls, for the hedging delay.
struct LatencyTracker {
    samples: Mutex<std::collections::VecDeque<u64>>,
    threshold_us: AtomicU64,
    recorded: AtomicU64,
    percentile: f32,
    min_samples: u64,
}

/// Samples kept for the hedging percentile.
const LATENCY_WINDOW: usize = 512;

impl LatencyTracker {
    fn new(percentile: f32, min_samples: u64) -> Self {
        LatencyTracker {
            samples: Mutex::new(std::collections::VecDeque::with_capacity(LATENCY_WINDOW)),
            threshold_us: AtomicU64::new(u64::MAX),
            recorded: AtomicU64::new(0),
            percentile,
            min_samples,
        }
    }

    fn record(&self, latency: Duration) {
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
    fn hedge_delay(&self) -> Option<Duration> {
        match self.threshold_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us.max(100))),
        }
    }
}

/// A resilient channel to every live instance of one service.
#[derive(Clone)]
pub struct GrpcChannel {
    service: Arc<str>,
    live: Arc<AtomicUsize>,
    policy: Arc<ClientPolicy>,
    balancer: SharedBalancer,
    latencies: Arc<LatencyTracker>,
    budget: Arc<TpsBudget>,
    metrics: Arc<RequestMetrics>,
}

impl GrpcChannel {
    /// Opens a channel to `service` with the default policy and `timeout_cap`.
    pub async fn connect(
        discovery: SharedDiscovery,
        service: &str,
        timeout_cap: Duration,
    ) -> Result<GrpcChannel> {
        let policy = ClientPolicy {
            timeout_cap,
            ..ClientPolicy::default()
        };
        Self::connect_with(discovery, service, policy).await
    }

    /// Opens a channel to `service`, kept up to date by watching discovery.
    pub async fn connect_with(
        discovery: SharedDiscovery,
        service: &str,
        policy: ClientPolicy,
    ) -> Result<GrpcChannel> {
        let service_name: Arc<str> = Arc::from(service);
        let policy = Arc::new(policy);
        let (changes, discovered) = mpsc::unbounded_channel::<
            std::result::Result<Change<String, EndpointService>, Infallible>,
        >();
        let discover = PeakEwmaDiscover::new(
            tokio_stream::wrappers::UnboundedReceiverStream::new(discovered),
            Duration::from_millis(5),
            Duration::from_secs(5),
            CompleteOnResponse::default(),
        );
        let balancer = SharedBalancer(Arc::new(tokio::sync::Mutex::new(Balance::new(discover))));
        let latencies = Arc::new(LatencyTracker::new(
            policy.hedge_percentile,
            policy.hedge_min_samples,
        ));
        let live = Arc::new(AtomicUsize::new(0));
        let group = Arc::new(EjectionGroup::new(service_name.clone()));
        let mut endpoints = Endpoints {
            changes,
            known: HashMap::new(),
            live: live.clone(),
            group,
            policy: policy.clone(),
        };
        endpoints.apply(discovery.resolve(service).await?);
        let mut updates = discovery.watch(service).await?;
        tokio::spawn(async move {
            while let Some(snapshot) = updates.next().await {
                if !endpoints.apply(snapshot) {
                    break;
                }
            }
        });
        let budget = Arc::new(TpsBudget::new(
            Duration::from_secs(10),
            policy.retry_min_per_second,
            policy.retry_ratio,
        ));
        Ok(GrpcChannel {
            metrics: Arc::new(RequestMetrics::new("client", service_name.clone())),
            service: service_name,
            live,
            policy,
            balancer,
            latencies,
            budget,
        })
    }

    /// Number of instances the channel currently balances over.
    pub fn live_instances(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

/// Turns discovery snapshots into balancer changes.
struct Endpoints {
    changes:
        mpsc::UnboundedSender<std::result::Result<Change<String, EndpointService>, Infallible>>,
    known: HashMap<String, String>,
    live: Arc<AtomicUsize>,
    group: Arc<EjectionGroup>,
    policy: Arc<ClientPolicy>,
}

impl Endpoints {
    /// Sends the difference to the balancer; false once the channel is gone.
    fn apply(&mut self, snapshot: Vec<Registration>) -> bool {
        let wanted: HashMap<String, String> = snapshot
            .into_iter()
            .filter(|r| r.protocol == Protocol::Grpc)
            .map(|r| (r.instance, r.address))
            .collect();
        let gone: Vec<String> = self
            .known
            .iter()
            .filter(|(k, v)| wanted.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        for instance in gone {
            self.known.remove(&instance);
            if self.changes.send(Ok(Change::Remove(instance))).is_err() {
                return false;
            }
        }
        for (instance, address) in wanted {
            if self.known.contains_key(&instance) {
                continue;
            }
            let endpoint = match EndpointService::new(
                &address,
                self.group.clone(),
                self.policy.clone(),
            ) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(%address, error = %e, "discovery reported an unusable address");
                    continue;
                }
            };
            if self
                .changes
                .send(Ok(Change::Insert(instance.clone(), endpoint)))
                .is_err()
            {
                return false;
            }
            self.known.insert(instance, address);
        }
        self.live.store(self.known.len(), Ordering::Relaxed);
        true
    }
}

/// Sends one attempt within `deadline`; with `hedge_after`, sends a copy if no answer came by
/// then and takes whichever answers first (the other is dropped, which cancels it). One timer
/// serves both the hedge and the deadline.
async fn send(
    balancer: &SharedBalancer,
    call: Call,
    hedge_after: Option<Duration>,
    deadline: Option<Instant>,
    service: &str,
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
                    metrics::counter!("sterling_client_hedges_total", "service" => service.to_string()).increment(1);
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

fn status_error(error: Error) -> BoxError {
    Box::new(tonic::Status::from(error))
}

/// Whether an attempt's outcome may be retried: UNAVAILABLE (unless marked not retryable),
/// RESOURCE_EXHAUSTED marked retryable (a shed request), or a transport failure.
fn retryable_outcome(result: &std::result::Result<http::Response<Body>, BoxError>) -> bool {
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

impl Service<http::Request<Body>> for GrpcChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, std::result::Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        // Readiness is decided per attempt, below the retry loop.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let service = self.service.clone();
        if self.live.load(Ordering::Relaxed) == 0 {
            let error =
                Error::unavailable("no_instances", format!("no live instance of {service}"))
                    .with_param("service", &*service);
            return Box::pin(async move { Err(status_error(error)) });
        }
        let path = request.uri().path().to_string();
        let mut kind = kind_of(&path);
        if kind == MethodKind::Write && request.headers().contains_key(IDEMPOTENCY_KEY_HEADER) {
            kind = MethodKind::IdempotentWrite;
        }
        let context = RequestContext::current();
        let caller_left = context.as_ref().and_then(RequestContext::remaining);
        // A stream with no caller deadline lives as long as its caller wants.
        let timeout = match (kind, caller_left) {
            (MethodKind::Streaming, None) => None,
            (_, Some(left)) => Some(left.min(self.policy.timeout_cap)),
            (_, None) => Some(self.policy.timeout_cap),
        };
        if timeout.is_some_and(|t| t.is_zero()) {
            return Box::pin(async move {
                Err(status_error(Error::timeout(format!(
                    "no time left to call {service}"
                ))))
            });
        }
        let retries_allowed = kind.retryable() && context.as_ref().is_none_or(|c| c.attempt <= 1);
        let (mut parts, body) = request.into_parts();
        let headers = &mut parts.headers;
        if let Some(t) = timeout
            && let Ok(v) = HeaderValue::from_str(&format_grpc_timeout(t))
        {
            headers.insert(GRPC_TIMEOUT_HEADER, v);
        }
        if let Some(context) = &context {
            if let Ok(v) = HeaderValue::from_str(&context.request_id) {
                headers.insert(REQUEST_ID_HEADER, v);
            }
            // This hop's span is the parent of the callee's.
            if let Ok(v) = HeaderValue::from_str(&context.trace.header()) {
                headers.insert(TRACEPARENT_HEADER, v);
            }
            headers.insert(HOP_HEADER, HeaderValue::from(context.hop + 1));
        }
        let (balancer, latencies, budget, policy) = (
            self.balancer.clone(),
            self.latencies.clone(),
            self.budget.clone(),
            self.policy.clone(),
        );
        let method = path.rsplit('/').next().unwrap_or_default().to_string();
        let method_metrics = self.metrics.method(&method);
        Box::pin(async move {
            let started = Instant::now();
            let deadline = timeout.map(|t| started + t);
            let body = body
                .collect()
                .await
                .map_err(|e| status_error(Error::internal(format!("request body: {e}"))))?
                .to_bytes();
            let base = Call {
                uri: parts.uri,
                headers: parts.headers,
                body,
            };
            budget.deposit();
            let mut attempt = 1u32;
            let result = loop {
                let mut call = base.clone();
                call.headers
                    .insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
                let span =
                    tracing::debug_span!("attempt", service = %service, method = %method, attempt);
                let hedge_after = if kind == MethodKind::Read {
                    latencies.hedge_delay()
                } else {
                    None
                };
                let sent_at = Instant::now();
                let result = send(&balancer, call, hedge_after, deadline, &service)
                    .instrument(span)
                    .await;
                if kind == MethodKind::Read
                    && result
                        .as_ref()
                        .is_ok_and(|r| grpc_status(r.headers()).is_none())
                {
                    latencies.record(sent_at.elapsed());
                }
                if !retries_allowed || attempt >= policy.max_attempts || !retryable_outcome(&result)
                {
                    break result;
                }
                if !budget.withdraw() {
                    metrics::counter!("sterling_client_retry_budget_exhausted_total", "service" => service.to_string()).increment(1);
                    break result;
                }
                let ceiling =
                    (policy.backoff_base * (1 << (attempt - 1).min(10))).min(policy.backoff_max);
                let backoff =
                    Duration::from_micros(rand::rng().random_range(0..=ceiling.as_micros() as u64));
                if deadline.is_some_and(|d| Instant::now() + backoff >= d) {
                    break result;
                }
                metrics::counter!("sterling_client_retries_total", "service" => service.to_string(), "method" => method.clone()).increment(1);
                tokio::time::sleep(backoff).await;
                attempt += 1;
            };
            let code = match &result {
                Ok(response) => grpc_status(response.headers()).unwrap_or(0),
                Err(e) => e
                    .downcast_ref::<tonic::Status>()
                    .map(|s| s.code() as i32)
                    .unwrap_or(-1),
            };
            method_metrics.record(code, started.elapsed());
            result
        })
    }
}
