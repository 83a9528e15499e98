//! Layer 5: the panic guard. A handler that panics answers `internal` (a 500 problem document
//! on HTTP) and is logged at ERROR; the connection and the other requests on it live on.

use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use metrics::Counter;
use tower::{Layer, Service};

use super::Wire;
use crate::error::Error;

/// See the module documentation.
#[derive(Clone)]
pub struct PanicGuardLayer {
    panics: Counter,
}

impl PanicGuardLayer {
    /// Counts panics in `sterling_server_panics_total{service}` (present from start).
    pub fn new(service: &'static str) -> Self {
        PanicGuardLayer {
            panics: ::metrics::counter!("sterling_server_panics_total", "service" => service),
        }
    }
}

impl<S> Layer<S> for PanicGuardLayer {
    type Service = PanicGuard<S>;
    fn layer(&self, inner: S) -> PanicGuard<S> {
        PanicGuard {
            inner,
            panics: self.panics.clone(),
        }
    }
}

/// See [`PanicGuardLayer`].
#[derive(Clone)]
pub struct PanicGuard<S> {
    inner: S,
    panics: Counter,
}

fn answer<B: Wire>(panics: &Counter, panic: Box<dyn std::any::Any + Send>) -> http::Response<B> {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "handler panicked");
    panics.increment(1);
    B::refuse(Error::internal("the handler failed"))
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for PanicGuard<S>
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
        let inner = &mut self.inner;
        let panics = self.panics.clone();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(request))) {
            Ok(response) => Box::pin(
                AssertUnwindSafe(response)
                    .catch_unwind()
                    .map(move |result| result.unwrap_or_else(|panic| Ok(answer(&panics, panic)))),
            ),
            Err(panic) => Box::pin(async move { Ok(answer(&panics, panic)) }),
        }
    }
}
