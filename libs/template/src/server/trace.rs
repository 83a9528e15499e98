//! Layer 1: the request context and span. Turns the inbound headers into the
//! [`RequestContext`] the handler runs in, opens the request span (a child of the caller's span in the trace), logs one line
//! per request and answers with the request id. Health probes are served without a span or a
//! log line, so they make no traces of their own.

use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use super::{Wire, context_from_headers};
use crate::context::{REQUEST_ID_HEADER, RequestContext, TRACEPARENT_HEADER, TraceContext};

/// See the module documentation.
#[derive(Clone)]
pub struct TraceLayer {
    service: &'static str,
}

impl TraceLayer {
    /// Spans naming `service`.
    pub fn new(service: &'static str) -> Self {
        TraceLayer { service }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            service: self.service,
        }
    }
}

/// See [`TraceLayer`].
#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    service: &'static str,
}

/// Whether a path is a health probe's.
pub fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path == "/healthz"
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Trace<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Wire,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut context = context_from_headers(request.headers(), None);
        if is_probe(request.uri().path()) {
            let response = self.inner.call(request);
            return Box::pin(context.scope(response));
        }
        let span = tracing::info_span!(
            "request",
            otel.name = %ResBody::span_name(&request),
            otel.kind = "server",
            service = self.service,
            method = %request.uri().path(),
            request_id = %context.request_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            hop = context.hop,
        );
        if !span.is_disabled() {
            let parent = request
                .headers()
                .get(TRACEPARENT_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(TraceContext::parse);
            crate::telemetry::join_trace(&span, parent.as_ref(), &mut context);
            span.record("trace_id", context.trace.trace_id.as_str());
            span.record("span_id", context.trace.span_id.as_str());
        }
        let request_id = http::HeaderValue::from_str(&context.request_id).ok();
        let started = Instant::now();
        let response = span.in_scope(|| self.inner.call(request));
        let handled = async move {
            let mut response = response.await?;
            if tracing::enabled!(tracing::Level::INFO) {
                let (label, outcome) = ResBody::outcome(&response);
                tracing::info!(
                    outcome = %format!("{label}={outcome}"),
                    error_code = %ResBody::error_code(&response),
                    duration_us = started.elapsed().as_micros() as u64,
                    "request handled"
                );
            }
            if let Some(id) = request_id {
                response.headers_mut().insert(REQUEST_ID_HEADER, id);
            }
            Ok(response)
        };
        Box::pin(RequestContext::scope(context, handled).instrument(span))
    }
}
