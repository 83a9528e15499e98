//! A probe service for exercising the template in tests and benchmarks: instances whose
//! latency, failures and downstream calls are set from outside, and that count what happened
//! to their requests (handled, failed, cancelled by the caller, deadline seen).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use sterling_proto::testing::v1::probe_client::ProbeClient;
use sterling_proto::testing::v1::probe_server::{Probe, ProbeServer};
use sterling_proto::testing::v1::{ProbeReply, ProbeRequest};
use tonic::{Request, Response, Status};

use crate::Api;
use crate::client::GrpcChannel;
use crate::client::policy::ClientPolicy;
use crate::context::RequestContext;
use crate::error::Error;
use crate::platform::{self, Platform, RunningService};
use crate::server::access::{ANY_CALLER, Rule};

/// How a probe instance behaves; change it while it runs.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Time each request takes.
    pub delay: Duration,
    /// Fail every request with this code.
    pub fail: Option<tonic::Code>,
    /// With this probability a request takes the second value instead of `delay`.
    pub tail: Option<(f64, Duration)>,
    /// Panic in the handler (after the delay).
    pub panic: bool,
}

/// What happened to a probe instance's requests.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests that reached the handler.
    pub received: AtomicU64,
    /// Requests answered (successfully or with the configured failure).
    pub finished: AtomicU64,
    /// Requests whose handler was dropped before finishing (the caller gave up).
    pub cancelled: AtomicU64,
    /// The smallest deadline any request arrived with, in microseconds (`u64::MAX` if none).
    pub min_deadline_us: AtomicU64,
}

/// A running probe instance.
pub struct ProbeInstance {
    /// The instance name it answers with.
    pub name: String,
    /// Its behaviour, changeable at run time.
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// What happened to its requests.
    pub counters: Arc<Counters>,
    /// The running service (address, stop).
    pub running: RunningService,
}

struct Handler {
    name: String,
    behaviour: Arc<Mutex<Behaviour>>,
    counters: Arc<Counters>,
    downstream: Option<(String, ClientPolicy)>,
    downstream_channel: tokio::sync::OnceCell<GrpcChannel>,
    platform: Platform,
}

struct CancelGuard {
    counters: Arc<Counters>,
    finished: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let counter = if self.finished {
            &self.counters.finished
        } else {
            &self.counters.cancelled
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

impl Handler {
    async fn handle(&self, request: ProbeRequest) -> Result<ProbeReply, Status> {
        self.counters.received.fetch_add(1, Ordering::SeqCst);
        let mut guard = CancelGuard {
            counters: self.counters.clone(),
            finished: false,
        };
        let deadline = RequestContext::current().and_then(|c| c.remaining());
        if let Some(d) = deadline {
            self.counters
                .min_deadline_us
                .fetch_min(d.as_micros() as u64, Ordering::SeqCst);
        }
        let behaviour = self
            .behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut delay = behaviour.delay;
        if let Some((p, tail)) = behaviour.tail
            && rand::rng().random_bool(p)
        {
            delay = tail;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if behaviour.panic {
            panic!("{} panics on purpose", self.name);
        }
        if let Some(code) = behaviour.fail {
            guard.finished = true;
            return Err(Status::new(code, format!("{} fails on purpose", self.name)));
        }
        if let Some((service, policy)) = &self.downstream {
            let channel = self
                .downstream_channel
                .get_or_try_init(|| {
                    GrpcChannel::connect_with(
                        self.platform.discovery.clone(),
                        service,
                        policy.clone(),
                    )
                })
                .await?
                .clone()
                .calling_as(&self.platform.identity, &self.name)
                .clone();
            let onward = ProbeRequest {
                payload: request.payload.clone(),
                downstream: String::new(),
            };
            ProbeClient::new(channel)
                .read(onward)
                .await
                .map_err(|s| Status::from(Error::from(s)))?;
        }
        guard.finished = true;
        Ok(ProbeReply {
            instance: self.name.clone(),
            payload: request.payload,
            deadline_us: deadline.map(|d| d.as_micros() as i64).unwrap_or(0),
        })
    }
}

#[tonic::async_trait]
impl Probe for Handler {
    async fn read(&self, request: Request<ProbeRequest>) -> Result<Response<ProbeReply>, Status> {
        self.handle(request.into_inner()).await.map(Response::new)
    }

    async fn write(&self, request: Request<ProbeRequest>) -> Result<Response<ProbeReply>, Status> {
        self.handle(request.into_inner()).await.map(Response::new)
    }
}

/// Any caller the bank knows may call a probe.
pub const PROBE_ACCESS: &[Rule] = &[
    Rule {
        method: "Read",
        callers: &[ANY_CALLER],
    },
    Rule {
        method: "Write",
        callers: &[ANY_CALLER],
    },
];

/// Starts a probe instance registered as `service`, optionally calling `downstream` (another
/// probe service) with `policy` from each request.
pub async fn start_probe(
    platform: &Platform,
    service: &'static str,
    instance: &str,
    behaviour: Behaviour,
    downstream: Option<(&str, ClientPolicy)>,
) -> anyhow::Result<ProbeInstance> {
    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    start_probe_at(platform, service, instance, behaviour, downstream, listen).await
}

/// As [`start_probe`], listening on `listen`.
pub async fn start_probe_at(
    platform: &Platform,
    service: &'static str,
    instance: &str,
    behaviour: Behaviour,
    downstream: Option<(&str, ClientPolicy)>,
    listen: SocketAddr,
) -> anyhow::Result<ProbeInstance> {
    let behaviour = Arc::new(Mutex::new(behaviour));
    let counters = Arc::new(Counters {
        min_deadline_us: AtomicU64::new(u64::MAX),
        ..Counters::default()
    });
    let handler = Handler {
        name: instance.to_string(),
        behaviour: behaviour.clone(),
        counters: counters.clone(),
        downstream: downstream.map(|(s, p)| (s.to_string(), p)),
        downstream_channel: tokio::sync::OnceCell::new(),
        platform: platform.clone(),
    };
    let running = platform::start_with(
        service,
        &[],
        &[],
        PROBE_ACCESS,
        platform,
        listen,
        move |_ctx| Box::pin(async move { Ok(Api::grpc(ProbeServer::new(handler))) }),
    )
    .await?;
    Ok(ProbeInstance {
        name: instance.to_string(),
        behaviour,
        counters,
        running,
    })
}
