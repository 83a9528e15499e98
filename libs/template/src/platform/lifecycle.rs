//! The life of a service: start (store, API, server with the template's stack, health,
//! registration, heartbeat) and a graceful stop (leave discovery, announce NOT_SERVING, let
//! consumers finish the event in hand, drain in-flight requests within a bound).

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use sterling_storage::Migration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tracing::Instrument;

use super::PlatformConfig;
use super::engines::{Platform, open_store};
use super::health::{Health, StoreChecker};
use super::service::{Api, GrpcApi, PUBLIC_API, ServiceContext, ServiceDefinition, Setting};
use crate::discovery::{Protocol, Registration};
use crate::outbox::TEMPLATE_MIGRATIONS;
use crate::server::access::{AccessLayer, Rule};

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
    registrations: Vec<Registration>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningService {
    /// Its registrations in discovery: under its name, and under the public API's if it
    /// serves part of it.
    pub fn registrations(&self) -> &[Registration] {
        &self.registrations
    }

    /// Whether every checker passed on the last round.
    pub fn ready(&self) -> bool {
        self.context.health.failures().is_empty()
    }

    /// Why the service is not ready (empty when it is), e.g. `storage: unavailable: ...`.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        self.context.health.failures()
    }

    /// Leaves discovery and reports NOT_SERVING while still serving: the first step of a
    /// stop, held for a grace period so that probes and balancers see it before the port
    /// closes.
    pub async fn announce_stopping(&self) {
        for registration in &self.registrations {
            let _ = self
                .context
                .platform
                .discovery
                .deregister(&registration.service, &registration.instance)
                .await;
        }
        // The check loop must not report SERVING again.
        for task in &self.background {
            task.abort();
        }
        self.context.health.set(ServingStatus::NotServing).await;
        tracing::info!(service = self.name, "stopping: NOT_SERVING announced");
    }

    /// Graceful stop: announce stopping, let consumers finish the event in hand, stop
    /// accepting, drain in-flight requests within the drain bound.
    pub async fn stop(mut self) {
        self.announce_stopping().await;
        self.context.stopping.cancel();
        let drain = self.context.platform.config.drain_timeout;
        let draining: Vec<JoinHandle<()>> = lock(&self.context.draining).drain(..).collect();
        for mut task in draining {
            if tokio::time::timeout(drain, &mut task).await.is_err() {
                task.abort();
            }
        }
        for task in lock(&self.context.tasks).drain(..) {
            task.abort();
        }
        self.shutdown.cancel();
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(drain, &mut server).await.is_err()
        {
            tracing::warn!(
                service = self.name,
                "drain bound reached; aborting in-flight requests"
            );
            server.abort();
        }
        tracing::info!(service = self.name, "stopped");
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts a service on `listen`: opens its store, builds its API, serves it with the template's
/// stack, registers it in discovery with a heartbeat and runs its health checks.
pub async fn start(
    definition: &ServiceDefinition,
    platform: &Platform,
    listen: SocketAddr,
) -> anyhow::Result<RunningService> {
    start_with(
        definition.name,
        definition.migrations,
        definition.settings,
        definition.access,
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
    settings: &'static [Setting],
    access: &'static [Rule],
    platform: &Platform,
    listen: SocketAddr,
    build: B,
) -> anyhow::Result<RunningService>
where
    B: FnOnce(ServiceContext) -> BoxFuture<'static, anyhow::Result<Api>>,
{
    super::background::init(platform.config.consumer_nice);
    let mut migrations = service_migrations.to_vec();
    migrations.extend(TEMPLATE_MIGRATIONS);
    let store = open_store(&platform.config, name, &migrations).await?;
    let health = Health::new(std::sync::Arc::new(StoreChecker(store.clone())));
    let context = ServiceContext::new(name, settings, store, platform.clone(), health.clone());
    let api = with_dead_letters(build(context.clone()).await?, &context);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let access = AccessLayer::new(name, platform.identity.clone(), access);
    let routes = match &api {
        Api::Public(public) => public.prefixes.clone(),
        _ => Vec::new(),
    };
    let (protocol, server) = serve(
        name,
        api,
        access,
        &health,
        listener,
        platform,
        shutdown.clone(),
    )?;
    health.check_once().await;
    let health_loop = tokio::spawn(
        health
            .run(platform.config.health_interval)
            .instrument(tracing::info_span!("health", service = name)),
    );
    let registration = Registration {
        service: name.to_string(),
        instance: context.instance.clone(),
        address: advertised(&platform.config, address),
        protocol,
        zone: platform.config.zone.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        routes,
    };
    tracing::info!(service = name, %address, registered = %registration.address, ?protocol, instance = %registration.instance, "serving and registered in discovery");
    let mut registrations = vec![registration.clone()];
    if !registration.routes.is_empty() {
        // Also under the public API's name, where the gateway looks for routes.
        registrations.push(Registration {
            service: PUBLIC_API.to_string(),
            ..registration
        });
    }
    let mut background = vec![health_loop];
    for registration in &registrations {
        platform
            .discovery
            .register(registration, platform.config.registration_ttl)
            .await?;
        background.push(heartbeat(platform, registration.clone()));
    }
    Ok(RunningService {
        name,
        address,
        protocol,
        context,
        registrations,
        shutdown,
        server: Some(server),
        background,
    })
}

/// A gRPC API with the operator's dead-letter service added when the service consumes events.
fn with_dead_letters(api: Api, context: &ServiceContext) -> Api {
    let consumers = context.consumers();
    match api {
        Api::Grpc(grpc) if !consumers.is_empty() => {
            let bus = context.platform.bus.clone();
            Api::Grpc(grpc.serve(super::dead_letters::server(bus, consumers)))
        }
        api => api,
    }
}

/// Serves `api` on `listener` with the template's stack, health reporting to it.
fn serve(
    name: &'static str,
    api: Api,
    access: AccessLayer,
    health: &Health,
    listener: tokio::net::TcpListener,
    platform: &Platform,
    shutdown: CancellationToken,
) -> anyhow::Result<(Protocol, JoinHandle<()>)> {
    let max_in_flight = platform.config.max_in_flight;
    Ok(match api {
        Api::Grpc(api) => {
            let (reporter, names) = health_names(name, &api);
            health.report_to(reporter.clone(), names);
            let stack = crate::server::stack(name, "grpc", access, max_in_flight);
            let server = serve_grpc(name, api, reporter, listener, stack, shutdown)?;
            (Protocol::Grpc, server)
        }
        Api::Http(router) => {
            let stack = crate::server::stack(name, "http", AccessLayer::open(), max_in_flight);
            let server = serve_http(name, router, health.clone(), listener, stack, shutdown);
            (Protocol::Http, server)
        }
        Api::Public(public) => {
            let access = AccessLayer::gateway_only(name, platform.identity.clone());
            let stack = crate::server::stack(name, "http", access, max_in_flight);
            let server = serve_http(
                name,
                public.router,
                health.clone(),
                listener,
                stack,
                shutdown,
            );
            (Protocol::Http, server)
        }
    })
}

/// The health service and every name it reports under: the short name and each gRPC service.
fn health_names(
    name: &'static str,
    api: &GrpcApi,
) -> (tonic_health::server::HealthReporter, Vec<String>) {
    let reporter = tonic_health::server::HealthReporter::new();
    let names = std::iter::once(name.to_string())
        .chain(api.names.iter().map(|n| n.to_string()))
        .collect();
    (reporter, names)
}

fn serve_grpc(
    name: &'static str,
    api: GrpcApi,
    reporter: tonic_health::server::HealthReporter,
    listener: tokio::net::TcpListener,
    stack: crate::server::ServerStack,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let health_service = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(reporter),
    );
    let mut reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sterling_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for service in &api.names {
        reflection = reflection.with_service_name(*service);
    }
    let routes = api
        .routes
        .add_service(health_service)
        .add_service(reflection.build_v1()?);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Ok(tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(stack)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::error!(service = name, error = %e, "server failed");
        }
    }))
}

/// Serves an HTTP API with the template's stack, and `GET /healthz` answering 200 `SERVING`
/// or 503 `NOT_SERVING` from the service's health (the HTTP counterpart of gRPC health).
fn serve_http(
    name: &'static str,
    router: axum::Router,
    health: Health,
    listener: tokio::net::TcpListener,
    stack: crate::server::ServerStack,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let healthz = axum::routing::get(move || {
        let serving = health.serving();
        async move {
            if serving {
                (http::StatusCode::OK, "SERVING")
            } else {
                (http::StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING")
            }
        }
    });
    let router = router
        .route("/healthz", healthz)
        .layer(axum::middleware::map_response(
            crate::server::problem::problem_json,
        ))
        .layer(stack);
    tokio::spawn(async move {
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        // The peer's address is in each request (`ConnectInfo`), e.g. for per-client limits.
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::error!(service = name, error = %e, "server failed");
        }
    })
}

/// How soon a failed heartbeat is tried again.
const HEARTBEAT_RETRY: Duration = Duration::from_millis(250);

fn heartbeat(platform: &Platform, registration: Registration) -> JoinHandle<()> {
    let discovery = platform.discovery.clone();
    let ttl = platform.config.registration_ttl;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // A failed heartbeat is tried again soon, each try bounded, rather than a third
            // of a TTL later: a registry outage must not outlast the TTL by our own waiting.
            loop {
                let attempt =
                    tokio::time::timeout(ttl / 6, discovery.register(&registration, ttl)).await;
                match attempt {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => {
                        tracing::warn!(service = %registration.service, error = %e, "heartbeat failed")
                    }
                    Err(_) => {
                        tracing::warn!(service = %registration.service, "heartbeat timed out")
                    }
                }
                tokio::time::sleep(HEARTBEAT_RETRY).await;
            }
        }
    })
}

/// The address registered in discovery: the advertised host with the bound port, or the bound
/// address itself.
fn advertised(config: &PlatformConfig, bound: SocketAddr) -> String {
    match &config.advertise_host {
        Some(host) if host.contains(':') && !host.starts_with('[') => {
            format!("[{host}]:{}", bound.port())
        }
        Some(host) => format!("{host}:{}", bound.port()),
        None => bound.to_string(),
    }
}
