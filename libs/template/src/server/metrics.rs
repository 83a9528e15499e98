//! Layer 2: request metrics. Counts every request by method and outcome (refusals and panics
//! included, since they are answered below this layer) and records its duration; see
//! [`crate::request_metrics`] for the series.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::Wire;
use crate::request_metrics::{MethodMetrics, RequestMetrics};

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

pin_project! {
    /// A request's future that records its outcome and duration when it completes.
    pub struct Measured<F, B> {
        #[pin]
        inner: F,
        method: Arc<MethodMetrics>,
        started: Instant,
        _body: PhantomData<fn() -> B>,
    }
}

impl<F, B, E> Future for Measured<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Wire,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &output {
            let (label, outcome) = B::outcome(response);
            this.method
                .record((label, &outcome), this.started.elapsed());
        }
        Poll::Ready(output)
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Metrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Wire,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Measured<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = self.metrics.method(&ResBody::method(&request));
        Measured {
            inner: self.inner.call(request),
            method,
            started: Instant::now(),
            _body: PhantomData,
        }
    }
}
