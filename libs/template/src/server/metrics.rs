//! Layer 2: request metrics. Counts every request by method and outcome (refusals and panics
//! included, since they are answered below this layer) and records its duration; see
//! [`crate::request_metrics`] for the series.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::Wire;
use crate::request_metrics::RequestMetrics;

/// See the module documentation.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<RequestMetrics>,
}

impl MetricsLayer {
    /// Metrics of `service`, labelled with its `protocol` (`grpc` or `http`).
    pub fn new(service: &'static str, protocol: &'static str) -> Self {
        MetricsLayer {
            metrics: Arc::new(RequestMetrics::new(
                "server",
                vec![
                    ("service", service.to_string()),
                    ("protocol", protocol.to_string()),
                ],
            )),
        }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    metrics: Arc<RequestMetrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Metrics<S>
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
        let (parts, body) = request.into_parts();
        let method = self.metrics.method(&ResBody::method(&parts));
        let started = Instant::now();
        let response = self.inner.call(http::Request::from_parts(parts, body));
        Box::pin(async move {
            let response = response.await?;
            let (label, outcome) = ResBody::outcome(&response);
            method.record((label, &outcome), started.elapsed());
            Ok(response)
        })
    }
}
