//! The server side of a hop: a tower layer that turns the inbound request's headers into the
//! [`RequestContext`] the handler runs in, opens the request span every log line of the handler
//! carries, logs one line per request, and turns a panic into an `internal` error instead of a
//! dropped connection.

use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::context::{
    GRPC_TIMEOUT_HEADER, HOP_HEADER, REQUEST_ID_HEADER, RequestContext, TRACEPARENT_HEADER,
    TraceContext, parse_grpc_timeout,
};
use crate::error::Error;

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
    context
}

/// The layer every service's server gets from the template.
#[derive(Clone)]
pub struct ServerContextLayer {
    service: &'static str,
}

impl ServerContextLayer {
    /// A layer naming the service in its spans.
    pub fn new(service: &'static str) -> Self {
        ServerContextLayer { service }
    }
}

impl<S> Layer<S> for ServerContextLayer {
    type Service = ServerContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerContext {
            inner,
            service: self.service,
        }
    }
}

/// See [`ServerContextLayer`].
#[derive(Clone)]
pub struct ServerContext<S> {
    inner: S,
    service: &'static str,
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
        let context = context_from_headers(request.headers(), None);
        let method = request.uri().path().to_string();
        let span = tracing::info_span!(
            "request",
            service = self.service,
            method = %method,
            request_id = %context.request_id,
            trace_id = %context.trace.trace_id,
            span_id = %context.trace.span_id,
            hop = context.hop,
        );
        let started = Instant::now();
        let handled = context.scope(async move {
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
            let status = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("0")
                .to_string();
            let code = response
                .headers()
                .get(crate::error::ERROR_CODE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            tracing::info!(
                grpc_status = %status,
                error_code = %code,
                duration_us = started.elapsed().as_micros() as u64,
                "request handled"
            );
            Ok(response)
        });
        Box::pin(handled.instrument(span))
    }
}
