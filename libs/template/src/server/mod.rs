//! The server side of a hop: one stack of layers, each with one job, around every service the
//! template serves, gRPC (tonic) and HTTP (axum) alike. Read top to bottom, a request passes:
//!
//! 1. [`trace`]: the request context from the headers (request id, deadline, trace, hop), the
//!    request span every log line of the handler carries, one log line per request;
//! 2. [`metrics`]: requests by method and outcome, and their durations;
//! 3. on gRPC, [`access`]: the caller's identity is checked, then the method's rule;
//! 4. [`deadline`]: a request whose deadline has already passed is refused at once;
//! 5. [`shed`]: past a bound on requests in flight, new ones are refused at once (retryable);
//! 6. [`panic`]: a panicking handler becomes an `internal` error, not a dropped connection;
//! 7. on HTTP only, [`problem`]: every error response is `application/problem+json`.
//!
//! Refusals are written in the protocol's own way by [`Wire`]: a gRPC status with the stable
//! code in metadata, or a problem document.

pub mod access;
pub mod deadline;
pub mod metrics;
pub mod panic;
pub mod problem;
pub mod shed;
pub mod trace;

use std::borrow::Cow;
use std::time::Duration;

use tower::layer::util::{Identity, Stack};

pub use self::problem::Problem;
use crate::context::{
    ATTEMPT_HEADER, GRPC_TIMEOUT_HEADER, HOP_HEADER, REQUEST_ID_HEADER, RequestContext,
    TRACEPARENT_HEADER, TraceContext, parse_grpc_timeout,
};
use crate::error::Error;

/// How a protocol writes a refusal and names an outcome; implemented by the response body
/// types of tonic and axum.
pub trait Wire: Sized + Send + 'static {
    /// The response refusing a request with `error`.
    fn refuse(error: Error) -> http::Response<Self>;
    /// The outcome label of a response: `("code", "OK")` on gRPC, `("status", "404")` on HTTP.
    fn outcome(response: &http::Response<Self>) -> (&'static str, Cow<'static, str>);
    /// The method label of a request: the gRPC method, or `VERB /route/{param}` on HTTP.
    fn method<B>(request: &http::Request<B>) -> Cow<'_, str>;
    /// The name of a request's span: the gRPC path, or `VERB /path` on HTTP.
    fn span_name<B>(request: &http::Request<B>) -> Cow<'_, str>;
    /// The stable error code a response carries, if any.
    fn error_code(response: &http::Response<Self>) -> String {
        response
            .headers()
            .get(crate::error::ERROR_CODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

impl Wire for tonic::body::Body {
    fn refuse(error: Error) -> http::Response<Self> {
        tonic::Status::from(error).into_http()
    }

    fn outcome(response: &http::Response<Self>) -> (&'static str, Cow<'static, str>) {
        // A handler's error is trailers-only: its status is in the headers. A response with a
        // body ends with its status in the trailers; answered by a handler, that is OK.
        let code = crate::client::endpoint::grpc_status(response.headers()).unwrap_or(0);
        let name = crate::request_metrics::grpc_code_name(code);
        ("code", Cow::Borrowed(name))
    }

    fn method<B>(request: &http::Request<B>) -> Cow<'_, str> {
        let path = request.uri().path();
        Cow::Borrowed(path.rsplit('/').next().unwrap_or_default())
    }

    fn span_name<B>(request: &http::Request<B>) -> Cow<'_, str> {
        Cow::Borrowed(request.uri().path())
    }
}

impl Wire for axum::body::Body {
    fn refuse(error: Error) -> http::Response<Self> {
        use axum::response::IntoResponse;
        Problem(error).into_response()
    }

    fn outcome(response: &http::Response<Self>) -> (&'static str, Cow<'static, str>) {
        ("status", Cow::Owned(response.status().as_u16().to_string()))
    }

    fn method<B>(request: &http::Request<B>) -> Cow<'_, str> {
        let route = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or("unmatched", |p| p.as_str());
        Cow::Owned(format!("{} {route}", request.method()))
    }

    fn span_name<B>(request: &http::Request<B>) -> Cow<'_, str> {
        Cow::Owned(format!("{} {}", request.method(), request.uri().path()))
    }

    fn error_code(response: &http::Response<Self>) -> String {
        response
            .extensions()
            .get::<problem::ErrorCode>()
            .map(|c| c.0.clone())
            .unwrap_or_default()
    }
}

/// The template's stack, outermost first (see the module documentation).
pub type ServerStack = Stack<
    panic::PanicGuardLayer,
    Stack<
        shed::ShedLayer,
        Stack<
            deadline::DeadlineLayer,
            Stack<
                access::AccessLayer,
                Stack<metrics::MetricsLayer, Stack<trace::TraceLayer, Identity>>,
            >,
        >,
    >,
>;

/// The stack for `service`, checking callers with `access`, shedding past `max_in_flight`
/// requests at once.
pub fn stack(
    service: &'static str,
    protocol: &'static str,
    access: access::AccessLayer,
    max_in_flight: usize,
) -> ServerStack {
    tower::ServiceBuilder::new()
        .layer(trace::TraceLayer::new(service))
        .layer(metrics::MetricsLayer::new(service, protocol))
        .layer(access)
        .layer(deadline::DeadlineLayer::new(service))
        .layer(shed::ShedLayer::new(service, max_in_flight))
        .layer(panic::PanicGuardLayer::new(service))
        .into_inner()
}

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
