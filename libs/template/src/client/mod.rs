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
//!   does not retry downstream, so retries never multiply across hops; a call whose connection
//!   could not be made (a peer restarting, its name not resolving for a moment) sent nothing,
//!   and connects again for up to three seconds within its deadline, whatever the method;
//! - **hedging**: reads slower than a recent latency percentile are sent again, the first
//!   answer wins and the other is cancelled;
//! - **connection pooling**: one HTTP/2 connection per endpoint, kept alive and reused;
//! - **cancellation**: dropping the call drops every attempt and resets its streams.

mod balance;
pub mod endpoint;
mod hedge;
pub mod policy;
mod retry;

pub use retry::reconnect_pause;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use http::HeaderValue;
use http_body_util::BodyExt;
use metrics::Counter;
use tokio::sync::mpsc;
use tonic::body::Body;
use tower::Service;
use tower::balance::p2c::Balance;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::retry::budget::{Budget, TpsBudget};
use tracing::Instrument;

use self::balance::{Endpoints, SharedBalancer};
use self::endpoint::{Call, EjectionGroup, EndpointService, grpc_status};
use self::hedge::LatencyTracker;
use self::policy::{ClientPolicy, MethodKind};
use crate::context::{
    ATTEMPT_HEADER, GRPC_TIMEOUT_HEADER, HOP_HEADER, REQUEST_ID_HEADER, RequestContext,
    TRACEPARENT_HEADER, format_grpc_timeout,
};
use crate::discovery::SharedDiscovery;
use crate::error::{Error, Result};
use crate::identity::{IDENTITY_HEADER, Identity};
use crate::request_metrics::{RequestMetrics, grpc_code_name};

/// Boxed error type of the channel (a `tonic::Status` inside for errors it makes itself).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Header by which a caller marks a plain write safe to retry.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Caller label of channels opened outside any service (tools, tests).
pub const EXTERNAL_CALLER: &str = "external";

/// Counters of one channel, registered when it opens so every series exists at 0.
struct ChannelMetrics {
    requests: RequestMetrics,
    retries: Counter,
    budget_exhausted: Counter,
    hedges: Counter,
}

impl ChannelMetrics {
    fn new(caller: &str, service: &str) -> Self {
        let labels = || {
            [
                ("caller", caller.to_string()),
                ("service", service.to_string()),
            ]
        };
        ChannelMetrics {
            requests: RequestMetrics::new("client", labels().to_vec()),
            retries: metrics::counter!("sterling_client_retries_total", &labels()),
            budget_exhausted: metrics::counter!(
                "sterling_client_retry_budget_exhausted_total",
                &labels()
            ),
            hedges: metrics::counter!("sterling_client_hedges_total", &labels()),
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
    metrics: Arc<ChannelMetrics>,
    caller: Option<(Identity, Arc<str>)>,
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

    /// Opens a channel to `service` for a caller outside any service.
    pub async fn connect_with(
        discovery: SharedDiscovery,
        service: &str,
        policy: ClientPolicy,
    ) -> Result<GrpcChannel> {
        Self::connect_from(EXTERNAL_CALLER, discovery, service, policy).await
    }

    /// Opens a channel from service `caller` to `service`, kept up to date by watching
    /// discovery; its metrics name both.
    pub async fn connect_from(
        caller: &str,
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
            metrics: Arc::new(ChannelMetrics::new(caller, service)),
            service: service_name,
            live,
            policy,
            balancer,
            latencies,
            budget,
            caller: None,
        })
    }

    /// The channel calling as `caller` (a service name, or [`crate::identity::OPERATOR`]):
    /// every call carries a token of `identity` naming it.
    pub fn calling_as(mut self, identity: &Identity, caller: &str) -> Self {
        self.caller = Some((identity.clone(), Arc::from(caller)));
        self
    }

    /// Number of instances the channel currently balances over.
    pub fn live_instances(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// How long a call of `kind` may take: the caller's remaining deadline capped by the
    /// policy; a stream with no caller deadline lives as long as its caller wants.
    fn timeout_for(&self, kind: MethodKind, context: Option<&RequestContext>) -> Option<Duration> {
        match (kind, context.and_then(RequestContext::remaining)) {
            (MethodKind::Streaming, None) => None,
            (_, Some(left)) => Some(left.min(self.policy.timeout_cap)),
            (_, None) => Some(self.policy.timeout_cap),
        }
    }
}

fn status_error(error: Error) -> BoxError {
    Box::new(tonic::Status::from(error))
}

/// Puts the deadline and the request context on an outgoing call: request id, the client
/// span as the callee's parent, the hop count.
fn stamp(
    headers: &mut http::HeaderMap,
    timeout: Option<Duration>,
    context: Option<&RequestContext>,
    span: &tracing::Span,
) {
    if let Some(t) = timeout
        && let Ok(v) = HeaderValue::from_str(&format_grpc_timeout(t))
    {
        headers.insert(GRPC_TIMEOUT_HEADER, v);
    }
    if let Some(context) = context {
        if let Ok(v) = HeaderValue::from_str(&context.request_id) {
            headers.insert(REQUEST_ID_HEADER, v);
        }
        let trace = crate::telemetry::span_trace(span, &context.trace);
        let header = trace.as_ref().unwrap_or(&context.trace).header();
        if let Ok(v) = HeaderValue::from_str(&header) {
            headers.insert(TRACEPARENT_HEADER, v);
        }
        headers.insert(HOP_HEADER, HeaderValue::from(context.hop + 1));
    }
}

/// One call through the channel: everything the attempt loop needs, owned.
struct Attempts {
    channel: GrpcChannel,
    kind: MethodKind,
    method: String,
    deadline: Option<Instant>,
    retries_allowed: bool,
}

impl Attempts {
    /// Sends attempts until one succeeds, fails for good, the policy's attempts or the retry
    /// budget are spent, or the next backoff would pass the deadline. An attempt whose
    /// connection could not be made is not counted: it is sent again for up to
    /// [`retry::CONNECT_WINDOW`] within the deadline, whatever the method (nothing was sent).
    async fn run(self, base: Call) -> std::result::Result<http::Response<Body>, BoxError> {
        let channel = &self.channel;
        let mut attempt = 1u32;
        let (mut first_connect_failure, mut connect_failures) = (None, 0u32);
        loop {
            let mut call = base.clone();
            call.headers
                .insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
            let hedge_after = (self.kind == MethodKind::Read)
                .then(|| channel.latencies.hedge_delay())
                .flatten();
            let sent_at = Instant::now();
            let span = tracing::debug_span!("attempt", service = %channel.service, method = %self.method, attempt);
            let result = hedge::send(
                &channel.balancer,
                call,
                hedge_after,
                self.deadline,
                &channel.service,
                &channel.metrics.hedges,
            )
            .instrument(span)
            .await;
            if self.kind == MethodKind::Read
                && result
                    .as_ref()
                    .is_ok_and(|r| grpc_status(r.headers()).is_none())
            {
                channel.latencies.record(sent_at.elapsed());
            }
            if retry::never_sent(&result) {
                // Nothing reached the peer: connect again, whatever the method, for a while.
                let failed_at = *first_connect_failure.get_or_insert_with(Instant::now);
                connect_failures += 1;
                let pause = retry::reconnect_pause(connect_failures);
                let within = failed_at.elapsed() + pause < retry::CONNECT_WINDOW
                    && self.deadline.is_none_or(|d| Instant::now() + pause < d);
                if !within {
                    return result;
                }
                channel.metrics.retries.increment(1);
                tokio::time::sleep(pause).await;
                continue;
            }
            if !self.retries_allowed
                || attempt >= channel.policy.max_attempts
                || !retry::retryable_outcome(&result)
            {
                return result;
            }
            if !channel.budget.withdraw() {
                channel.metrics.budget_exhausted.increment(1);
                return result;
            }
            let backoff = retry::backoff(&channel.policy, attempt);
            if self.deadline.is_some_and(|d| Instant::now() + backoff >= d) {
                return result;
            }
            channel.metrics.retries.increment(1);
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }
}

/// The gRPC code an outcome ends with (`UNAVAILABLE` for a transport failure).
fn outcome_code(result: &std::result::Result<http::Response<Body>, BoxError>) -> i32 {
    match result {
        Ok(response) => grpc_status(response.headers()).unwrap_or(0),
        Err(e) => e
            .downcast_ref::<tonic::Status>()
            .map(|s| s.code() as i32)
            .unwrap_or(tonic::Code::Unavailable as i32),
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
            tracing::warn!(service = %service, "no live instance of {service}: is it running and registered?");
            let error =
                Error::unavailable("no_instances", format!("no live instance of {service}"))
                    .with_param("service", &*service);
            return Box::pin(async move { Err(status_error(error)) });
        }
        let path = request.uri().path().to_string();
        let mut kind = policy::kind_of(&path);
        if kind == MethodKind::Write && request.headers().contains_key(IDEMPOTENCY_KEY_HEADER) {
            kind = MethodKind::IdempotentWrite;
        }
        let context = RequestContext::current();
        let timeout = self.timeout_for(kind, context.as_ref());
        if timeout.is_some_and(|t| t.is_zero()) {
            let error = Error::timeout(format!("no time left to call {service}"));
            return Box::pin(async move { Err(status_error(error)) });
        }
        let span = tracing::info_span!("call", otel.name = %path, otel.kind = "client", peer.service = %service);
        let (mut parts, body) = request.into_parts();
        stamp(&mut parts.headers, timeout, context.as_ref(), &span);
        if let Some((identity, caller)) = &self.caller
            && !parts.headers.contains_key(http::header::AUTHORIZATION)
            && let Some(token) = identity.token_for(caller)
        {
            parts.headers.insert(IDENTITY_HEADER, token);
        }
        let method = path.rsplit('/').next().unwrap_or_default().to_string();
        let method_metrics = self.metrics.requests.method(&method);
        let attempts = Attempts {
            channel: self.clone(),
            kind,
            method,
            deadline: timeout.map(|t| Instant::now() + t),
            // A call that is itself a retry does not retry downstream.
            retries_allowed: kind.retryable() && context.as_ref().is_none_or(|c| c.attempt <= 1),
        };
        let call = async move {
            let started = Instant::now();
            let body = body
                .collect()
                .await
                .map_err(|e| status_error(Error::internal(format!("request body: {e}"))))?
                .to_bytes();
            attempts.channel.budget.deposit();
            let base = Call {
                uri: parts.uri,
                headers: parts.headers,
                body,
            };
            let result = attempts.run(base).await;
            let code = outcome_code(&result);
            method_metrics.record(("code", grpc_code_name(code)), started.elapsed());
            result
        };
        Box::pin(call.instrument(span))
    }
}
