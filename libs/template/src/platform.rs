//! What a service is given and how it is run: configuration, its store, discovery, clients,
//! health, and the lifecycle (start, register, heartbeat, drain, deregister).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use sterling_storage::embedded::{Durability, SqliteStore};
use sterling_storage::{Migration, Mutation, Row, SharedStore, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tracing::Instrument;

use sterling_bus::embedded::SqliteBus;
use sterling_bus::nats::{NatsBus, NatsConfig};
use sterling_bus::{Bus, ConsumerConfig, Envelope};
use sterling_storage::cassandra::{CassandraConfig, CassandraStore, keyspace_of};

use crate::client::GrpcChannel;
use crate::client::policy::ClientPolicy;
use crate::context::{RequestContext, TraceContext};
use crate::discovery::nats::NatsDiscovery;
use crate::discovery::{Protocol, Registration, SharedDiscovery, StaticDiscovery};
use crate::error::{Error, Result};
use crate::outbox::{
    Confirm, OUTBOX_GRACE, OUTBOX_MIGRATION, Outbox, PROCESSED_EVENTS_MIGRATION,
    PROCESSED_EVENTS_TTL,
};
use crate::server::{ServerContextLayer, context_from_headers};

/// Platform-wide settings, read from `STERLING_*` environment variables.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Where embedded stores keep their files (`STERLING_DATA_DIR`, default `./data`).
    pub data_dir: PathBuf,
    /// fsync policy of embedded stores (`STERLING_DURABILITY`: `full` or `normal`).
    pub durability: Durability,
    /// Timeout of a call made outside any request (`STERLING_CALL_TIMEOUT_MS`, default 2000).
    pub call_timeout: Duration,
    /// How long a registration lives without a heartbeat (`STERLING_REGISTRATION_TTL_MS`).
    pub registration_ttl: Duration,
    /// Bound on draining in-flight requests at shutdown (`STERLING_DRAIN_TIMEOUT_MS`).
    pub drain_timeout: Duration,
    /// This instance's zone (`STERLING_ZONE`).
    pub zone: String,
    /// How often health checks run (`STERLING_HEALTH_INTERVAL_MS`, default 5000).
    pub health_interval: Duration,
    /// Requests a service handles at once before shedding load (`STERLING_MAX_IN_FLIGHT`,
    /// default 512).
    pub max_in_flight: usize,
    /// Per-service settings, `STERLING_<SERVICE>_<NAME>` in the environment; entries here win.
    pub settings: HashMap<String, String>,
    /// Names the deployment's keyspaces (`<namespace>_<service>`), event stream and discovery
    /// bucket, so several deployments can share one cluster (`STERLING_NAMESPACE`, default
    /// `sterling`).
    pub namespace: String,
    /// Where services keep their data (`STERLING_STORAGE`: `embedded` or `cassandra`).
    pub storage: StorageBackend,
    /// NATS server for the `nats` bus and discovery (`STERLING_NATS_URL`).
    pub nats_url: String,
}

/// The engine behind every service's store.
#[derive(Debug, Clone)]
pub enum StorageBackend {
    /// One SQLite file per service under the data directory.
    Embedded,
    /// One keyspace per service on Cassandra or ScyllaDB.
    Cassandra(CassandraConfig),
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

impl PlatformConfig {
    /// Reads the environment, with defaults that work on a fresh machine.
    pub fn from_env() -> Self {
        PlatformConfig {
            data_dir: std::env::var("STERLING_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from("data")),
            durability: match std::env::var("STERLING_DURABILITY").as_deref() {
                Ok("normal") => Durability::Normal,
                _ => Durability::Full,
            },
            call_timeout: env_ms("STERLING_CALL_TIMEOUT_MS", 2000),
            registration_ttl: env_ms("STERLING_REGISTRATION_TTL_MS", 10_000),
            drain_timeout: env_ms("STERLING_DRAIN_TIMEOUT_MS", 10_000),
            zone: std::env::var("STERLING_ZONE").unwrap_or_default(),
            health_interval: env_ms("STERLING_HEALTH_INTERVAL_MS", 5000),
            max_in_flight: std::env::var("STERLING_MAX_IN_FLIGHT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(512),
            settings: HashMap::new(),
            namespace: std::env::var("STERLING_NAMESPACE").unwrap_or_else(|_| "sterling".into()),
            storage: match std::env::var("STERLING_STORAGE").as_deref() {
                Ok("cassandra") => StorageBackend::Cassandra(CassandraConfig::from_env()),
                _ => StorageBackend::Embedded,
            },
            nats_url: std::env::var("STERLING_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        }
    }
}

/// What every service in a process shares: configuration, discovery and the event bus.
#[derive(Clone)]
pub struct Platform {
    /// Settings.
    pub config: PlatformConfig,
    /// The discovery backend.
    pub discovery: SharedDiscovery,
    /// The event bus.
    pub bus: Arc<dyn Bus>,
}

impl Platform {
    /// A platform from the environment: discovery from `STERLING_DISCOVERY` (`nats`,
    /// `static:name=host:port,...` or `file:PATH`, default `file:<data dir>/endpoints.json`),
    /// the bus from `STERLING_BUS` (`nats`, or `embedded[:PATH]`, default
    /// `<data dir>/bus.sqlite`, which processes on one machine can share).
    pub async fn from_env() -> Result<Platform> {
        let config = PlatformConfig::from_env();
        let spec = std::env::var("STERLING_DISCOVERY").unwrap_or_else(|_| {
            format!("file:{}", config.data_dir.join("endpoints.json").display())
        });
        let discovery = discovery_from_spec(&spec, &config).await?;
        let bus_spec = std::env::var("STERLING_BUS").unwrap_or_else(|_| "embedded".into());
        let bus: Arc<dyn Bus> = if bus_spec == "nats" {
            Arc::new(nats_bus(&config).await?)
        } else if let Some(rest) = bus_spec.strip_prefix("embedded") {
            let path = match rest.strip_prefix(':') {
                Some(path) => PathBuf::from(path),
                None => config.data_dir.join("bus.sqlite"),
            };
            let full = config.durability == Durability::Full;
            Arc::new(
                SqliteBus::open_with(&path, full)
                    .map_err(|e| Error::unavailable("bus", e.to_string()))?,
            )
        } else {
            return Err(Error::bad_request(
                "bus",
                format!("unknown STERLING_BUS {bus_spec}"),
            ));
        };
        Ok(Platform {
            config,
            discovery,
            bus,
        })
    }

    /// A platform whose bus and discovery are on NATS (JetStream, KV), so that services in
    /// several processes find each other; storage is whatever the configuration names.
    pub async fn nats(config: PlatformConfig) -> Result<Platform> {
        let discovery =
            NatsDiscovery::connect(&config.nats_url, &config.namespace, config.registration_ttl)
                .await?;
        let bus = nats_bus(&config).await?;
        Ok(Platform {
            config,
            discovery: Arc::new(discovery),
            bus: Arc::new(bus),
        })
    }

    /// A platform for services in one process: in-process discovery and the embedded bus under
    /// the data directory.
    pub fn embedded(config: PlatformConfig) -> Result<Platform> {
        let full = config.durability == Durability::Full;
        let bus = SqliteBus::open_with(&config.data_dir.join("bus.sqlite"), full)
            .map_err(|e| Error::unavailable("bus", e.to_string()))?;
        Ok(Platform {
            config,
            discovery: Arc::new(crate::discovery::EmbeddedDiscovery::new()),
            bus: Arc::new(bus),
        })
    }
}

/// Discovery from a spec: `nats`, `embedded`, `static:name=host:port,...` or `file:PATH`.
pub async fn discovery_from_spec(spec: &str, config: &PlatformConfig) -> Result<SharedDiscovery> {
    Ok(if spec == "nats" {
        Arc::new(
            NatsDiscovery::connect(&config.nats_url, &config.namespace, config.registration_ttl)
                .await?,
        )
    } else if spec == "embedded" {
        Arc::new(crate::discovery::EmbeddedDiscovery::new())
    } else if let Some(list) = spec.strip_prefix("static:") {
        Arc::new(StaticDiscovery::parse(list)?)
    } else if let Some(path) = spec.strip_prefix("file:") {
        Arc::new(StaticDiscovery::File(PathBuf::from(path)))
    } else {
        return Err(Error::bad_request(
            "discovery",
            format!("unknown STERLING_DISCOVERY {spec}"),
        ));
    })
}

async fn nats_bus(config: &PlatformConfig) -> Result<NatsBus> {
    let mut nats = NatsConfig::for_namespace(&config.nats_url, &config.namespace);
    if let Some(r) = std::env::var("STERLING_NATS_REPLICAS")
        .ok()
        .and_then(|r| r.parse().ok())
    {
        nats.replicas = r;
    }
    NatsBus::connect(nats)
        .await
        .map_err(|e| Error::unavailable("bus", e.to_string()))
}

/// An in-band health check: storage can read and write, a dependency is reachable, ...
#[async_trait]
pub trait Checker: Send + Sync + 'static {
    /// Short name, shown when the check fails.
    fn name(&self) -> &str;
    /// Ok when healthy; the reason otherwise.
    async fn check(&self) -> std::result::Result<(), String>;
}

struct BusChecker(Arc<dyn Bus>);

#[async_trait]
impl Checker for BusChecker {
    fn name(&self) -> &str {
        "bus"
    }
    async fn check(&self) -> std::result::Result<(), String> {
        self.0.check().await.map_err(|e| e.to_string())
    }
}

struct StoreChecker(SharedStore);

#[async_trait]
impl Checker for StoreChecker {
    fn name(&self) -> &str {
        "storage"
    }
    async fn check(&self) -> std::result::Result<(), String> {
        self.0.check().await.map_err(|e| e.to_string())
    }
}

/// What a service's builder is handed.
#[derive(Clone)]
pub struct ServiceContext {
    /// The service name.
    pub name: &'static str,
    /// The service's own store, migrations applied.
    pub store: SharedStore,
    /// The platform it runs on.
    pub platform: Platform,
    checkers: Arc<Mutex<Vec<Arc<dyn Checker>>>>,
    channels: Arc<tokio::sync::Mutex<HashMap<String, GrpcChannel>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    draining: Arc<Mutex<Vec<JoinHandle<()>>>>,
    stopping: CancellationToken,
}

impl ServiceContext {
    /// A channel to another service, shared by every client of that service in this one.
    pub async fn channel(&self, service: &str) -> Result<GrpcChannel> {
        let mut channels = self.channels.lock().await;
        if let Some(channel) = channels.get(service) {
            return Ok(channel.clone());
        }
        let channel = GrpcChannel::connect(
            self.platform.discovery.clone(),
            service,
            self.platform.config.call_timeout,
        )
        .await?;
        channels.insert(service.to_string(), channel.clone());
        Ok(channel)
    }

    /// A channel to another service with a policy of its own (not shared).
    pub async fn channel_with(&self, service: &str, policy: ClientPolicy) -> Result<GrpcChannel> {
        GrpcChannel::connect_with(self.platform.discovery.clone(), service, policy).await
    }

    /// A setting of this service: `STERLING_<SERVICE>_<NAME>` (upper case, `-` as `_`), or
    /// `default`.
    pub fn setting(&self, name: &str, default: &str) -> String {
        let key = format!("STERLING_{}_{}", self.name, name)
            .to_ascii_uppercase()
            .replace('-', "_");
        self.platform
            .config
            .settings
            .get(&key)
            .cloned()
            .or_else(|| std::env::var(&key).ok())
            .unwrap_or_else(|| default.to_string())
    }

    /// The service's outbox: events staged with state changes, published after them; its relay
    /// runs for the life of the service.
    pub fn outbox(&self, confirm: Arc<dyn Confirm>) -> Outbox {
        let outbox = Outbox::new(
            self.store.clone(),
            self.platform.bus.clone(),
            confirm,
            OUTBOX_GRACE,
        );
        self.add_checker(Arc::new(BusChecker(self.platform.bus.clone())));
        self.add_task(outbox.spawn_relay(OUTBOX_GRACE));
        outbox
    }

    /// Runs `handler` for every event of a durable consumer, for the life of the service. Each
    /// event is handled in the request context it carries (request id, trace); `Ok` acks it,
    /// an error naks it for redelivery with backoff, a `bad_request` dead-letters it at once.
    /// An event this consumer already handled (its id is in `processed_events`) is acked
    /// without running the handler again; handlers stay idempotent for the window between
    /// handling and recording.
    pub fn consume<F, Fut>(&self, config: ConsumerConfig, handler: F)
    where
        F: Fn(Envelope) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        self.add_checker(Arc::new(BusChecker(self.platform.bus.clone())));
        let bus = self.platform.bus.clone();
        let store = self.store.clone();
        let service = self.name;
        let stopping = self.stopping.clone();
        self.add_draining(tokio::spawn(async move {
            let mut subscription = loop {
                match bus.subscribe(config.clone()).await {
                    Ok(s) => break s,
                    Err(e) => {
                        tracing::warn!(service, error = %e, "cannot subscribe yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    _ = stopping.cancelled() => return,
                    next = subscription.next() => next,
                };
                let delivery = match next {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(service, error = %e, "bus error; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let envelope = delivery.envelope.clone();
                let mut context = RequestContext::new_root(
                    Some(envelope.request_id.clone()).filter(|r| !r.is_empty()),
                    None,
                );
                if let Some(parent) = TraceContext::parse(&envelope.traceparent) {
                    context.trace = parent.child();
                }
                let span = tracing::info_span!(
                    "event",
                    otel.name = %format!("{} {}", config.durable, envelope.r#type),
                    otel.kind = "consumer",
                    service,
                    event_type = %envelope.r#type,
                    event_id = %envelope.event_id,
                    attempt = delivery.attempt,
                    request_id = %context.request_id,
                    trace_id = tracing::field::Empty,
                    span_id = tracing::field::Empty,
                );
                crate::telemetry::join_trace(
                    &span,
                    TraceContext::parse(&envelope.traceparent).as_ref(),
                    &mut context,
                );
                span.record("trace_id", context.trace.trace_id.as_str());
                span.record("span_id", context.trace.span_id.as_str());
                let processed_key = Row::new()
                    .with("consumer", config.durable.as_str())
                    .with("event_id", envelope.event_id.as_str());
                match store.get("processed_events", &processed_key).await {
                    Ok(Some(_)) => {
                        span.in_scope(|| tracing::info!("already handled; acknowledging"));
                        if let Err(e) = delivery.ack().await {
                            tracing::warn!(service, error = %e, "could not settle a delivery");
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        span.in_scope(|| tracing::warn!(error = %e, "cannot read processed events; will retry"));
                        let _ = delivery.nak().await;
                        continue;
                    }
                }
                // A panicking handler fails this delivery (redelivered later), not the consumer.
                let handled = std::panic::AssertUnwindSafe(context.scope(handler(envelope)));
                let mut outcome = futures::FutureExt::catch_unwind(handled)
                    .instrument(span.clone())
                    .await
                    .unwrap_or_else(|_| Err(Error::internal("the event handler panicked")));
                if outcome.is_ok() {
                    let record = Mutation::insert(
                        "processed_events",
                        processed_key.with("processed_at", Value::Timestamp(sterling_storage::now_millis())),
                    )
                    .with_ttl(PROCESSED_EVENTS_TTL);
                    if let Err(e) = store.apply(vec![record]).await {
                        outcome = Err(e.into());
                    }
                }
                let settled = match outcome {
                    Ok(()) => {
                        span.in_scope(|| tracing::info!("event handled"));
                        delivery.ack().await
                    }
                    Err(e) if e.class() == "bad_request" => {
                        span.in_scope(|| tracing::warn!(code = e.code(), "event rejected"));
                        delivery.term(e.code()).await
                    }
                    Err(e) => {
                        span.in_scope(|| tracing::warn!(code = e.code(), error = %e, "event handling failed; will retry"));
                        delivery.nak().await
                    }
                };
                if let Err(e) = settled {
                    tracing::warn!(service, error = %e, "could not settle a delivery");
                }
            }
        }));
    }

    /// Runs a background task for the life of the service. At a graceful stop the task is
    /// given the drain bound to finish after [`ServiceContext::stopping`] fires, then aborted.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let span = tracing::info_span!("task", service = self.name);
        self.add_draining(tokio::spawn(task.instrument(span)));
    }

    /// Fires when the service starts stopping: background work should finish what it holds
    /// and take nothing new.
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    fn add_draining(&self, task: JoinHandle<()>) {
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    fn add_task(&self, task: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// Adds a health check.
    pub fn add_checker(&self, checker: Arc<dyn Checker>) {
        self.checkers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(checker);
    }
}

/// The API a service serves.
pub enum Api {
    /// gRPC services; health and reflection are added by the template.
    Grpc(tonic::service::Routes),
    /// An HTTP/JSON API (e.g. a webhook receiver for a card processor).
    Http(axum::Router),
}

/// A service: name, migrations and how to build its API from a [`ServiceContext`].
#[derive(Clone, Copy)]
pub struct ServiceDefinition {
    /// Service name; also its keyspace suffix and discovery name.
    pub name: &'static str,
    /// Its versioned CQL migrations.
    pub migrations: &'static [Migration],
    /// Builds the API.
    pub build: fn(ServiceContext) -> BoxFuture<'static, anyhow::Result<Api>>,
}

/// A started service.
pub struct RunningService {
    /// Service name.
    pub name: &'static str,
    /// Where it listens.
    pub address: SocketAddr,
    /// Protocol at the address.
    pub protocol: Protocol,
    /// Its context (store, clients), for tools and tests in the same process.
    pub context: ServiceContext,
    registration: Registration,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    health: Option<tonic_health::server::HealthReporter>,
    readiness: Readiness,
}

impl RunningService {
    /// Whether every checker passed on the last round.
    pub fn ready(&self) -> bool {
        self.readiness.failures().is_empty()
    }

    /// Why the service is not ready (empty when it is), e.g. `storage: unavailable: ...`.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        self.readiness.failures()
    }

    /// Graceful stop: leave discovery, report not serving, let consumers finish the event in
    /// hand, stop accepting, drain in-flight requests within the drain bound.
    pub async fn stop(mut self) {
        let _ = self
            .context
            .platform
            .discovery
            .deregister(self.name, &self.registration.instance)
            .await;
        if let Some(health) = &self.health {
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health
                .set_service_status(self.name, ServingStatus::NotServing)
                .await;
        }
        // Consumers and background work: take nothing new, finish what is in hand.
        self.context.stopping.cancel();
        let draining: Vec<JoinHandle<()>> = self
            .context
            .draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        let drain = self.context.platform.config.drain_timeout;
        for mut task in draining {
            if tokio::time::timeout(drain, &mut task).await.is_err() {
                task.abort();
            }
        }
        for task in self
            .context
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        self.shutdown.cancel();
        for task in &self.background {
            task.abort();
        }
        if let Some(mut server) = self.server.take() {
            let drain = self.context.platform.config.drain_timeout;
            if tokio::time::timeout(drain, &mut server).await.is_err() {
                tracing::warn!(
                    service = self.name,
                    "drain bound reached; aborting in-flight requests"
                );
                server.abort();
            }
        }
        tracing::info!(service = self.name, "stopped");
    }
}

/// Opens a service's store on the configured backend and applies its migrations: a SQLite
/// file under the data directory, or keyspace `<namespace>_<service>` on Cassandra.
pub async fn open_store(
    config: &PlatformConfig,
    name: &str,
    migrations: &[Migration],
) -> Result<SharedStore> {
    Ok(match &config.storage {
        StorageBackend::Embedded => {
            let path = config.data_dir.join(format!("{name}.sqlite"));
            Arc::new(SqliteStore::open(&path, migrations, config.durability)?)
        }
        StorageBackend::Cassandra(cassandra) => {
            let keyspace = keyspace_of(&config.namespace, name);
            Arc::new(CassandraStore::open(cassandra, &keyspace, migrations).await?)
        }
    })
}

/// Starts a service on `listen`: opens its store, builds its API, serves it with the template's
/// layers, registers it in discovery with a heartbeat and runs its health checks.
pub async fn start(
    definition: &ServiceDefinition,
    platform: &Platform,
    listen: SocketAddr,
) -> anyhow::Result<RunningService> {
    start_with(
        definition.name,
        definition.migrations,
        platform,
        listen,
        definition.build,
    )
    .await
}

/// As [`start`], with the API built by any function (tests build instances with state of
/// their own this way).
pub async fn start_with<B>(
    name: &'static str,
    service_migrations: &[Migration],
    platform: &Platform,
    listen: SocketAddr,
    build: B,
) -> anyhow::Result<RunningService>
where
    B: FnOnce(ServiceContext) -> BoxFuture<'static, anyhow::Result<Api>>,
{
    let mut migrations = service_migrations.to_vec();
    migrations.push(OUTBOX_MIGRATION);
    migrations.push(PROCESSED_EVENTS_MIGRATION);
    let store = open_store(&platform.config, name, &migrations).await?;
    let context = ServiceContext {
        name,
        store: store.clone(),
        platform: platform.clone(),
        checkers: Arc::new(Mutex::new(vec![
            Arc::new(StoreChecker(store)) as Arc<dyn Checker>
        ])),
        channels: Arc::default(),
        tasks: Arc::default(),
        draining: Arc::default(),
        stopping: CancellationToken::new(),
    };
    let api = build(context.clone()).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let (protocol, server, health) = match api {
        Api::Grpc(routes) => {
            let (health, health_service) = tonic_health::server::health_reporter();
            let reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(sterling_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()?;
            let routes = routes.add_service(health_service).add_service(reflection);
            let signal = shutdown.clone();
            let max_in_flight = platform.config.max_in_flight;
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let server = tokio::spawn(async move {
                let result = tonic::transport::Server::builder()
                    .http2_keepalive_interval(Some(Duration::from_secs(30)))
                    .layer(ServerContextLayer::new(name, max_in_flight))
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(incoming, signal.cancelled_owned())
                    .await;
                if let Err(e) = result {
                    tracing::error!(service = name, error = %e, "server failed");
                }
            });
            (Protocol::Grpc, server, Some(health))
        }
        Api::Http(router) => {
            let router = router.layer(axum::middleware::from_fn_with_state(
                name,
                http_request_context,
            ));
            let signal = shutdown.clone();
            let server = tokio::spawn(async move {
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                let result = axum::serve(listener, router)
                    .with_graceful_shutdown(signal.cancelled_owned())
                    .await;
                if let Err(e) = result {
                    tracing::error!(service = name, error = %e, "server failed");
                }
            });
            (Protocol::Http, server, None)
        }
    };
    let registration = Registration {
        service: name.to_string(),
        instance: format!("{name}-{}", uuid::Uuid::now_v7()),
        address: address.to_string(),
        protocol,
        zone: platform.config.zone.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        routes: Vec::new(),
    };
    let readiness = Readiness::new();
    let health_loop = tokio::spawn(
        run_checks(context.clone(), health.clone(), readiness.clone())
            .instrument(tracing::info_span!("health", service = name)),
    );
    run_checks_once(&context, health.as_ref(), &readiness).await;
    let ttl = platform.config.registration_ttl;
    platform.discovery.register(&registration, ttl).await?;
    let heartbeat = {
        let discovery = platform.discovery.clone();
        let registration = registration.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            loop {
                tick.tick().await;
                if let Err(e) = discovery.register(&registration, ttl).await {
                    tracing::warn!(service = %registration.service, error = %e, "heartbeat failed");
                }
            }
        })
    };
    tracing::info!(service = name, %address, ?protocol, "serving");
    Ok(RunningService {
        name,
        address,
        protocol,
        context,
        registration,
        shutdown,
        server: Some(server),
        background: vec![health_loop, heartbeat],
        health,
        readiness,
    })
}

/// The outcome of the last round of health checks.
#[derive(Clone)]
struct Readiness(Arc<Mutex<Vec<String>>>);

impl Readiness {
    fn new() -> Self {
        Readiness(Arc::new(Mutex::new(vec!["not checked yet".into()])))
    }

    fn failures(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a round; returns whether readiness changed.
    fn record(&self, failures: Vec<String>) -> bool {
        let mut current = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let changed = current.is_empty() != failures.is_empty();
        *current = failures;
        changed
    }
}

async fn run_checks_once(
    context: &ServiceContext,
    health: Option<&tonic_health::server::HealthReporter>,
    readiness: &Readiness,
) {
    let checkers: Vec<Arc<dyn Checker>> = context
        .checkers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut failures = Vec::new();
    for checker in checkers {
        let outcome = tokio::time::timeout(Duration::from_secs(2), checker.check()).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failures.push(format!("{}: {why}", checker.name())),
            Err(_) => failures.push(format!("{}: check timed out", checker.name())),
        }
    }
    let healthy = failures.is_empty();
    let changed = readiness.record(failures.clone());
    if changed || !healthy {
        if healthy {
            tracing::info!("ready");
        } else {
            tracing::warn!(failures = ?failures, "not ready");
        }
    }
    if let Some(health) = health {
        let status = if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        health.set_service_status(context.name, status).await;
    }
}

async fn run_checks(
    context: ServiceContext,
    health: Option<tonic_health::server::HealthReporter>,
    readiness: Readiness,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        run_checks_once(&context, health.as_ref(), &readiness).await;
    }
}

/// HTTP counterpart of the gRPC server layer: request context, span, one log line per request.
async fn http_request_context(
    axum::extract::State(service): axum::extract::State<&'static str>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut context = context_from_headers(request.headers(), None);
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        service,
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %context.request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        hop = context.hop,
    );
    let parent = request
        .headers()
        .get(crate::context::TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    crate::telemetry::join_trace(&span, parent.as_ref(), &mut context);
    span.record("trace_id", context.trace.trace_id.as_str());
    span.record("span_id", context.trace.span_id.as_str());
    let request_id = context.request_id.clone();
    let started = Instant::now();
    let mut response = context
        .scope(async move {
            let response = next.run(request).await;
            tracing::info!(
                http_status = response.status().as_u16(),
                duration_us = started.elapsed().as_micros() as u64,
                "request handled"
            );
            response
        })
        .instrument(span)
        .await;
    if let Ok(v) = http::HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(crate::context::REQUEST_ID_HEADER, v);
    }
    response
}

/// Runs one service as its own process: logging, platform from the environment, listen on
/// `STERLING_LISTEN` (default `127.0.0.1:0`), stop gracefully on SIGTERM or Ctrl-C.
pub fn main(definition: ServiceDefinition) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        // Inside the runtime: the OTLP exporter spawns its tasks on it.
        crate::telemetry::init(crate::telemetry::LogFormat::from_env());
        crate::telemetry::install_metrics_from_env();
        let platform = Platform::from_env().await?;
        let listen: SocketAddr = std::env::var("STERLING_LISTEN")
            .unwrap_or_else(|_| "127.0.0.1:0".to_string())
            .parse()?;
        let service = start(&definition, &platform, listen).await?;
        shutdown_signal().await;
        service.stop().await;
        crate::telemetry::flush();
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
