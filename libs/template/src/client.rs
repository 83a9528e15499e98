//! The service client: a channel to a service name, resolved through discovery, that carries
//! the request context across the hop.
//!
//! `ctx.channel("cards").await?` gives a [`GrpcChannel`] for any generated client
//! (`CardsClient::new(channel)`). The channel balances over every live instance discovery
//! reports (updated as instances come and go), and each call gets the caller's request id, a
//! child trace span, the hop count and a deadline: the caller's remaining deadline, or the
//! default call timeout when there is none. A call with no instance to go to, or no time left,
//! fails at once with `unavailable.no_instances` or `timeout`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use http::HeaderValue;
use tonic::body::Body;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tower::Service;

use crate::context::{
    GRPC_TIMEOUT_HEADER, HOP_HEADER, REQUEST_ID_HEADER, RequestContext, TRACEPARENT_HEADER,
    format_grpc_timeout,
};
use crate::discovery::{Protocol, Registration, SharedDiscovery};
use crate::error::{Error, Result};

/// Boxed error type of the channel (a `tonic::Status` inside for errors it makes itself).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A channel to every live instance of one service, with context propagation.
#[derive(Clone)]
pub struct GrpcChannel {
    inner: Channel,
    service: Arc<str>,
    live: Arc<AtomicUsize>,
    default_timeout: Duration,
}

impl GrpcChannel {
    /// Opens a channel to `service`, kept up to date by watching discovery.
    pub async fn connect(
        discovery: SharedDiscovery,
        service: &str,
        default_timeout: Duration,
    ) -> Result<GrpcChannel> {
        let (channel, changes) = Channel::balance_channel::<String>(64);
        let live = Arc::new(AtomicUsize::new(0));
        let mut known: HashMap<String, String> = HashMap::new();
        let initial = discovery.resolve(service).await?;
        apply_snapshot(&changes, &mut known, &live, initial).await;
        let mut updates = discovery.watch(service).await?;
        let watcher_live = live.clone();
        tokio::spawn(async move {
            while let Some(snapshot) = updates.next().await {
                if !apply_snapshot(&changes, &mut known, &watcher_live, snapshot).await {
                    break;
                }
            }
        });
        Ok(GrpcChannel {
            inner: channel,
            service: Arc::from(service),
            live,
            default_timeout,
        })
    }

    /// Number of instances the channel currently balances over.
    pub fn live_instances(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

fn endpoint(address: &str) -> Option<Endpoint> {
    Endpoint::from_shared(format!("http://{address}"))
        .ok()
        .map(|e| {
            e.connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        })
}

/// Sends the difference between `known` and `snapshot`; false once the channel is gone.
async fn apply_snapshot(
    changes: &tokio::sync::mpsc::Sender<Change<String, Endpoint>>,
    known: &mut HashMap<String, String>,
    live: &AtomicUsize,
    snapshot: Vec<Registration>,
) -> bool {
    let wanted: HashMap<String, String> = snapshot
        .into_iter()
        .filter(|r| r.protocol == Protocol::Grpc)
        .map(|r| (r.instance, r.address))
        .collect();
    let gone: Vec<String> = known
        .iter()
        .filter(|(k, v)| wanted.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    for instance in gone {
        known.remove(&instance);
        if changes.send(Change::Remove(instance)).await.is_err() {
            return false;
        }
    }
    for (instance, address) in wanted {
        if known.contains_key(&instance) {
            continue;
        }
        let Some(endpoint) = endpoint(&address) else {
            tracing::warn!(%address, "discovery reported an unusable address");
            continue;
        };
        if changes
            .send(Change::Insert(instance.clone(), endpoint))
            .await
            .is_err()
        {
            return false;
        }
        known.insert(instance, address);
    }
    live.store(known.len(), Ordering::Relaxed);
    true
}

fn fail(error: Error) -> BoxFuture<'static, Result<http::Response<Body>, BoxError>> {
    Box::pin(async move { Err(Box::new(tonic::Status::from(error)) as BoxError) })
}

impl Service<http::Request<Body>> for GrpcChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if self.live.load(Ordering::Relaxed) == 0 {
            return fail(
                Error::unavailable(
                    "no_instances",
                    format!("no live instance of {}", self.service),
                )
                .with_param("service", &*self.service),
            );
        }
        let context = RequestContext::current();
        let timeout = context
            .as_ref()
            .and_then(RequestContext::remaining)
            .unwrap_or(self.default_timeout);
        if timeout.is_zero() {
            return fail(Error::timeout(format!(
                "no time left to call {}",
                self.service
            )));
        }
        let headers = request.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format_grpc_timeout(timeout)) {
            headers.insert(GRPC_TIMEOUT_HEADER, v);
        }
        if let Some(context) = &context {
            if let Ok(v) = HeaderValue::from_str(&context.request_id) {
                headers.insert(REQUEST_ID_HEADER, v);
            }
            if let Ok(v) = HeaderValue::from_str(&context.trace.child().header()) {
                headers.insert(TRACEPARENT_HEADER, v);
            }
            headers.insert(HOP_HEADER, HeaderValue::from(context.hop + 1));
        }
        let service = self.service.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(tonic::Status::from(Error::timeout(format!(
                    "{service} did not answer within {timeout:?}"
                )))) as BoxError),
            }
        })
    }
}
