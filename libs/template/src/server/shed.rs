//! Layer 4: load shedding. At most `STERLING_MAX_IN_FLIGHT` requests are handled at once;
//! past that a request is refused at once with `unavailable.overloaded` (retryable, so a
//! client tries another instance) instead of queueing behind the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use metrics::Counter;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::Wire;
use crate::error::Error;

/// See the module documentation.
#[derive(Clone)]
pub struct ShedLayer {
    service: &'static str,
    in_flight: Arc<Semaphore>,
    shed: Counter,
}

impl ShedLayer {
    /// Sheds past `max_in_flight`, counting in `sterling_server_shed_total{service}`.
    pub fn new(service: &'static str, max_in_flight: usize) -> Self {
        ShedLayer {
            service,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            shed: metrics::counter!("sterling_server_shed_total", "service" => service),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`ShedLayer`].
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    layer: ShedLayer,
}

pin_project! {
    /// A request's future holding its place among those in flight until it completes.
    pub struct Admitted<F> {
        #[pin]
        inner: F,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F: Future> Future for Admitted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        this.permit.take();
        Poll::Ready(output)
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Shed<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Wire,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, Admitted<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let Ok(permit) = self.layer.in_flight.clone().try_acquire_owned() else {
            self.layer.shed.increment(1);
            tracing::warn!(service = self.layer.service, path = %request.uri().path(), "overloaded: shedding");
            let refusal = ResBody::refuse(
                Error::unavailable("overloaded", "too many requests in flight; retry")
                    .with_retryable(true),
            );
            return Either::Left(ready(Ok(refusal)));
        };
        Either::Right(Admitted {
            inner: self.inner.call(request),
            permit: Some(permit),
        })
    }
}
