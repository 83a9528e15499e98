//! Layer 5: the panic guard. A handler that panics answers `internal` (a 500 problem document
//! on HTTP) and is logged at ERROR; the connection and the other requests on it live on.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use metrics::Counter;
use pin_project_lite::pin_project;
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

pin_project! {
    /// A handler's future whose panic becomes an `internal` answer.
    pub struct Guarded<F> {
        #[pin]
        inner: Option<F>,
        panicked: Option<Box<dyn std::any::Any + Send>>,
        panics: Counter,
    }
}

impl<F, B, E> Future for Guarded<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Wire,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(panic) = this.panicked.take() {
            return Poll::Ready(Ok(answer(this.panics, panic)));
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(B::refuse(Error::internal("polled after completion"))));
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                this.inner.set(None);
                Poll::Ready(Ok(answer(this.panics, panic)))
            }
        }
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for PanicGuard<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Wire,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Guarded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(request))) {
            Ok(future) => Guarded {
                inner: Some(future),
                panicked: None,
                panics: self.panics.clone(),
            },
            Err(panic) => Guarded {
                inner: None,
                panicked: Some(panic),
                panics: self.panics.clone(),
            },
        }
    }
}
