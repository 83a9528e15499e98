//! The server side of a hop: a tower layer that turns the inbound request's headers into the
//! [`RequestContext`] the handler runs in, opens the request span every log line of the handler
//! carries, logs one line per request, and turns a panic into an `internal` error instead of a
//! dropped connection. It also sheds load past a bound on requests in flight, and refuses a
//! request whose deadline has already passed, both at once and with a stable error code.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::context::{
    ATTEMPT_HEADER, GRPC_TIMEOUT_HEADER, HOP_HEADER, REQUEST_ID_HEADER, RequestContext,
    TRACEPARENT_HEADER, TraceContext, parse_grpc_timeout,
};
use crate::error::Error;
use crate::request_metrics::RequestMetrics;

/// Reads the request context from inbound HTTP/2 (gRPC) or HTTP/1 headers.
pub fn context_from_headers(
    headers: &http::HeaderMap,
    default_deadline: Option<Duration>,
) -> RequestContext {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let deadline = header(GRPC_TIMEOUT_HEADER)
        .and_then(parse_grpc_timeout)
        .or(default_deadline);
    let mut context =
        RequestContext::new_root(header(REQUEST_ID_HEADER).map(str::to_string), deadline);
    if let Some(parent) = header(TRACEPARENT_HEADER).and_then(TraceContext::parse) {
        // This hop is a child of the caller's span.
        context.trace = parent.child();
    }
    context.hop = header(HOP_HEADER).and_then(|h| h.parse().ok()).unwrap_or(0);
    context.attempt = header(ATTEMPT_HEADER)
        .and_then(|h| h.parse().ok())
        .unwrap_or(1);
    context
}

/// The layer every service's server gets from the template.
#[derive(Clone)]
pub struct ServerContextLayer {
    service: &'static str,
    in_flight: Arc<Semaphore>,
    metrics: Arc<RequestMetrics>,
}

impl ServerContextLayer {
    /// A layer naming the service in its spans, handling at most `max_in_flight` requests at
    /// once: beyond that it sheds load, answering `unavailable.overloaded` (retryable) at once
    /// instead of queueing.
    pub fn new(service: &'static str, max_in_flight: usize) -> Self {
        ServerContextLayer {
            service,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            metrics: Arc::new(RequestMetrics::new("server", Arc::from(service))),
        }
    }
}

impl<S> Layer<S> for ServerContextLayer {
    type Service = ServerContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerContext {
            inner,
            service: self.service,
            in_flight: self.in_flight.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`ServerContextLayer`].
#[derive(Clone)]
pub struct ServerContext<S> {
    inner: S,
    service: &'static str,
    in_flight: Arc<Semaphore>,
    metrics: Arc<RequestMetrics>,
}

fn refuse(error: Error) -> http::Response<tonic::body::Body> {
    tonic::Status::from(error).into_http()
}

impl<S, B> Service<http::Request<B>> for ServerContext<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mut context = context_from_headers(request.headers(), None);
        let method = request.uri().path().to_string();
        let method_metrics = self
            .metrics
            .method(method.rsplit('/').next().unwrap_or_default());
        if context.remaining().is_some_and(|left| left.is_zero()) {
            metrics::counter!("sterling_server_expired_total", "service" => self.service)
                .increment(1);
            return Box::pin(async {
                Ok(refuse(Error::timeout(
                    "the deadline passed before the request was handled",
                )))
            });
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            metrics::counter!("sterling_server_shed_total", "service" => self.service).increment(1);
            tracing::warn!(service = self.service, method = %method, "overloaded: shedding");
            return Box::pin(async {
                Ok(refuse(
                    Error::unavailable("overloaded", "too many requests in flight; retry")
                        .with_retryable(true),
                ))
            });
        };
        let span = tracing::info_span!(
            "request",
            otel.name = %method,
            otel.kind = "server",
            service = self.service,
            method = %method,
            request_id = %context.request_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            hop = context.hop,
        );
        let parent = request
            .headers()
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        crate::telemetry::join_trace(&span, parent.as_ref(), &mut context);
        span.record("trace_id", context.trace.trace_id.as_str());
        span.record("span_id", context.trace.span_id.as_str());
        let started = Instant::now();
        let handled = context.scope(async move {
            let _permit = permit;
            let result = AssertUnwindSafe(inner.call(request)).catch_unwind().await;
            let response = match result {
                Ok(result) => result?,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "handler panicked");
                    tonic::Status::from(Error::internal("the handler failed")).into_http()
                }
            };
            let headers = response.headers();
            let status = crate::client::endpoint::grpc_status(headers).unwrap_or(0);
            let elapsed = started.elapsed();
            tracing::info!(
                grpc_status = status,
                error_code = headers
                    .get(crate::error::ERROR_CODE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                duration_us = elapsed.as_micros() as u64,
                "request handled"
            );
            method_metrics.record(status, elapsed);
            Ok(response)
        });
        Box::pin(handled.instrument(span))
    }
}
