//! Load balancing over the live instances of one service: discovery snapshots become balancer
//! changes, and tower's power-of-two-choices balancer over peak-EWMA latency picks an
//! endpoint per attempt.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tonic::body::Body;
use tower::Service;
use tower::balance::p2c::Balance;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};

use super::BoxError;
use super::endpoint::{Call, EjectionGroup, EndpointService};
use super::policy::ClientPolicy;
use crate::discovery::{Protocol, Registration};

pub(crate) type Balancer = Balance<
    PeakEwmaDiscover<
        tokio_stream::wrappers::UnboundedReceiverStream<
            std::result::Result<Change<String, EndpointService>, Infallible>,
        >,
        CompleteOnResponse,
    >,
    Call,
>;

/// The balancer behind a lock: callers wait for a ready endpoint in turn, then send without
/// holding the lock (cheaper than a buffer task hop on every call).
#[derive(Clone)]
pub(crate) struct SharedBalancer(pub(crate) Arc<tokio::sync::Mutex<Balancer>>);

impl SharedBalancer {
    pub(crate) async fn send(
        &self,
        call: Call,
    ) -> std::result::Result<http::Response<Body>, BoxError> {
        let future = {
            let mut balancer = self.0.lock().await;
            futures::future::poll_fn(|cx| balancer.poll_ready(cx)).await?;
            balancer.call(call)
        };
        future.await
    }
}

/// Turns discovery snapshots into balancer changes.
pub(crate) struct Endpoints {
    pub(crate) changes:
        mpsc::UnboundedSender<std::result::Result<Change<String, EndpointService>, Infallible>>,
    pub(crate) known: HashMap<String, String>,
    pub(crate) live: Arc<AtomicUsize>,
    pub(crate) group: Arc<EjectionGroup>,
    pub(crate) policy: Arc<ClientPolicy>,
}

impl Endpoints {
    /// Sends the difference to the balancer; false once the channel is gone.
    ///
    /// A snapshot listing no instance at all never empties a known set: when every
    /// registration vanishes at once, the registry's outage (NATS restarting, heartbeats
    /// missed past their TTL) is far likelier than every instance dying, so the last known
    /// instances stay, and outlier ejection deals with any that really died (Eureka's
    /// self-preservation, for the same reason).
    pub(crate) fn apply(&mut self, snapshot: Vec<Registration>) -> bool {
        let wanted: HashMap<String, String> = snapshot
            .into_iter()
            .filter(|r| r.protocol == Protocol::Grpc)
            .map(|r| (r.instance, r.address))
            .collect();
        if wanted.is_empty() && !self.known.is_empty() {
            tracing::warn!(
                service = %self.group.service(),
                kept = self.known.len(),
                "discovery lists no instance; keeping the last known ones"
            );
            return !self.changes.is_closed();
        }
        let gone: Vec<String> = self
            .known
            .iter()
            .filter(|(k, v)| wanted.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        for instance in gone {
            self.known.remove(&instance);
            if self.changes.send(Ok(Change::Remove(instance))).is_err() {
                return false;
            }
        }
        for (instance, address) in wanted {
            if self.known.contains_key(&instance) {
                continue;
            }
            let endpoint = match EndpointService::new(
                &address,
                self.group.clone(),
                self.policy.clone(),
            ) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(%address, error = %e, "discovery reported an unusable address");
                    continue;
                }
            };
            if self
                .changes
                .send(Ok(Change::Insert(instance.clone(), endpoint)))
                .is_err()
            {
                return false;
            }
            self.known.insert(instance, address);
        }
        self.live.store(self.known.len(), Ordering::Relaxed);
        true
    }
}
