//! Layer 4: load shedding. At most `STERLING_MAX_IN_FLIGHT` requests are handled at once;
//! past that a request is refused at once with `unavailable.overloaded` (retryable, so a
//! client tries another instance) instead of queueing behind the others.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use metrics::Counter;
use tokio::sync::Semaphore;
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

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Shed<S>
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
        let Ok(permit) = self.layer.in_flight.clone().try_acquire_owned() else {
            self.layer.shed.increment(1);
            tracing::warn!(service = self.layer.service, path = %request.uri().path(), "overloaded: shedding");
            return Box::pin(async {
                Ok(ResBody::refuse(
                    Error::unavailable("overloaded", "too many requests in flight; retry")
                        .with_retryable(true),
                ))
            });
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(permit);
            response
        })
    }
}
