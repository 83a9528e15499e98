//! Layer 3: expired deadlines. A request whose deadline (`grpc-timeout`) has already passed is
//! refused at once with `timeout`: working on it could only waste capacity.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use metrics::Counter;
use tower::{Layer, Service};

use super::Wire;
use crate::context::RequestContext;
use crate::error::Error;

/// See the module documentation.
#[derive(Clone)]
pub struct DeadlineLayer {
    expired: Counter,
}

impl DeadlineLayer {
    /// Counts refusals in `sterling_server_expired_total{service}` (present from start).
    pub fn new(service: &'static str) -> Self {
        DeadlineLayer {
            expired: metrics::counter!("sterling_server_expired_total", "service" => service),
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            expired: self.expired.clone(),
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    expired: Counter,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Deadline<S>
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
        let expired = request
            .extensions()
            .get::<RequestContext>()
            .and_then(RequestContext::remaining)
            .is_some_and(|left| left.is_zero());
        if expired {
            self.expired.increment(1);
            return Box::pin(async {
                Ok(ResBody::refuse(Error::timeout(
                    "the deadline passed before the request was handled",
                )))
            });
        }
        Box::pin(self.inner.call(request))
    }
}
