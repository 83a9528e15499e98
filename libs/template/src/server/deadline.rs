//! Layer 3: expired deadlines. A request whose deadline (`grpc-timeout`) has already passed is
//! refused at once with `timeout`: working on it could only waste capacity.

use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use metrics::Counter;
use tower::{Layer, Service};

use super::Wire;
use crate::context::{GRPC_TIMEOUT_HEADER, parse_grpc_timeout};
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
    ResBody: Wire,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let expired = request
            .headers()
            .get(GRPC_TIMEOUT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .is_some_and(|left| left.is_zero());
        if expired {
            self.expired.increment(1);
            let refusal = ResBody::refuse(Error::timeout(
                "the deadline passed before the request was handled",
            ));
            return Either::Left(ready(Ok(refusal)));
        }
        Either::Right(self.inner.call(request))
    }
}
