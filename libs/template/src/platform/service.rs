//! What a service is and what its builder is handed: [`ServiceDefinition`] (name, migrations,
//! settings, dependencies, builder), [`ServiceContext`] (store, platform, clients, settings,
//! outbox, consumers, background tasks) and the [`Api`] it serves.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use sterling_bus::{ConsumerConfig, Envelope};
use sterling_storage::{Migration, SharedStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::config::ConfigError;
use super::consumer::{Consumer, OrderKey, processed_records};
use super::engines::Platform;
use super::health::{BusChecker, Checker, Health};
use crate::client::GrpcChannel;
use crate::client::policy::ClientPolicy;
use crate::error::Result;
use crate::outbox::{Confirm, OUTBOX_GRACE, Outbox};
use crate::server::access::Rule;

/// A setting a service reads, `STERLING_<SERVICE>_<NAME>` in the environment.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Name within the service, lower case (`budget_ms`).
    pub name: &'static str,
    /// Value when unset.
    pub default: &'static str,
    /// What it does, for `sterling config`.
    pub help: &'static str,
}

/// A service: name, migrations, settings, dependencies and how to build its API.
#[derive(Clone, Copy)]
pub struct ServiceDefinition {
    /// Service name; also its keyspace suffix and discovery name.
    pub name: &'static str,
    /// Its versioned CQL migrations.
    pub migrations: &'static [Migration],
    /// The settings it reads.
    pub settings: &'static [Setting],
    /// Services it calls synchronously; they start before it.
    pub depends_on: &'static [&'static str],
    /// Who may call each gRPC method it serves ([`crate::server::access`]); a method with no
    /// rule answers `forbidden` to everyone.
    pub access: &'static [Rule],
    /// Builds the API.
    pub build: fn(ServiceContext) -> BoxFuture<'static, anyhow::Result<Api>>,
}

impl ServiceDefinition {
    /// The environment variable of one of its settings: `STERLING_<SERVICE>_<NAME>`.
    pub fn variable(&self, setting: &str) -> String {
        variable_of(self.name, setting)
    }

    /// The environment variables of all its settings.
    pub fn variables(&self) -> Vec<String> {
        self.settings
            .iter()
            .map(|s| self.variable(s.name))
            .collect()
    }
}

fn variable_of(service: &str, setting: &str) -> String {
    format!("STERLING_{service}_{setting}")
        .to_ascii_uppercase()
        .replace('-', "_")
}

/// The API a service serves.
pub enum Api {
    /// gRPC services; health and reflection are added by the template.
    Grpc(GrpcApi),
    /// An HTTP/JSON API (e.g. a webhook receiver for a card processor).
    Http(axum::Router),
    /// Part of the bank's public API, behind the gateway (see [`PublicApi`]).
    Public(PublicApi),
}

/// The discovery name under which every service of the public API also registers, with the
/// path prefixes it serves: what the gateway watches to route.
pub const PUBLIC_API: &str = "public-api";

/// Accounts whose events a consumer ordered by account handles at once
/// ([`ServiceContext::consume_by_account`]).
pub const ACCOUNTS_AT_ONCE: usize = 8;

/// An HTTP/JSON API serving paths under `prefixes` (`/v1/accounts`) of the bank's public API.
/// The gateway finds it through discovery ([`PUBLIC_API`]) and is its only caller; each
/// request carries the customer the gateway authenticated, as
/// [`crate::identity::Customer`] in its extensions.
pub struct PublicApi {
    /// The routes.
    pub router: axum::Router,
    /// The path prefixes it serves, each a whole path segment (`/v1/accounts` serves
    /// `/v1/accounts` and `/v1/accounts/...`).
    pub prefixes: Vec<String>,
}

/// gRPC routes and the fully-qualified names of the services in them.
#[derive(Default)]
pub struct GrpcApi {
    pub(crate) routes: tonic::service::Routes,
    pub(crate) names: Vec<&'static str>,
}

impl GrpcApi {
    /// Adds a generated server (`CardsServer::new(handlers)`).
    pub fn serve<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }
}

impl Api {
    /// A gRPC API of one generated server; add more with [`GrpcApi::serve`] and [`Api::Grpc`].
    pub fn grpc<S>(service: S) -> Api
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        Api::Grpc(GrpcApi::default().serve(service))
    }
}

/// What a service's builder is handed.
#[derive(Clone)]
pub struct ServiceContext {
    /// The service name.
    pub name: &'static str,
    /// This instance's id, unique per process (what it registers in discovery under).
    pub instance: String,
    /// The service's own store, migrations applied.
    pub store: SharedStore,
    /// The platform it runs on.
    pub platform: Platform,
    pub(crate) settings: &'static [Setting],
    pub(crate) health: Health,
    channels: Arc<tokio::sync::Mutex<HashMap<String, GrpcChannel>>>,
    pub(crate) tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    pub(crate) draining: Arc<Mutex<Vec<JoinHandle<()>>>>,
    pub(crate) stopping: CancellationToken,
    consumers: Arc<Mutex<Vec<String>>>,
}

impl ServiceContext {
    pub(crate) fn new(
        name: &'static str,
        settings: &'static [Setting],
        store: SharedStore,
        platform: Platform,
        health: Health,
    ) -> Self {
        ServiceContext {
            name,
            instance: format!("{name}-{}", uuid::Uuid::now_v7()),
            store,
            platform,
            settings,
            health,
            channels: Arc::default(),
            tasks: Arc::default(),
            draining: Arc::default(),
            stopping: CancellationToken::new(),
            consumers: Arc::default(),
        }
    }

    /// The durable names of the consumers this service runs.
    pub fn consumers(&self) -> Vec<String> {
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A channel to another service, shared by every client of that service in this one.
    pub async fn channel(&self, service: &str) -> Result<GrpcChannel> {
        let mut channels = self.channels.lock().await;
        if let Some(channel) = channels.get(service) {
            return Ok(channel.clone());
        }
        let policy = ClientPolicy {
            timeout_cap: self.platform.config.call_timeout,
            ..ClientPolicy::default()
        };
        let channel = self.channel_with(service, policy).await?;
        channels.insert(service.to_string(), channel.clone());
        Ok(channel)
    }

    /// A channel to another service with a policy of its own (not shared).
    pub async fn channel_with(&self, service: &str, policy: ClientPolicy) -> Result<GrpcChannel> {
        let channel =
            GrpcChannel::connect_from(self.name, self.platform.discovery.clone(), service, policy)
                .await?;
        Ok(channel.calling_as(&self.platform.identity, self.name))
    }

    /// A declared setting of this service: `STERLING_<SERVICE>_<NAME>` from the platform's
    /// settings or the environment, else its declared default.
    ///
    /// # Panics
    /// If the service did not declare `name` in its [`ServiceDefinition::settings`]: every
    /// setting is listed so `sterling config` and the typo check know it.
    pub fn setting(&self, name: &str) -> String {
        let declared = self
            .settings
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{} reads setting {name} without declaring it", self.name));
        let key = variable_of(self.name, name);
        self.platform
            .config
            .settings
            .get(&key)
            .cloned()
            .or_else(|| std::env::var(&key).ok())
            .unwrap_or_else(|| declared.default.to_string())
    }

    /// The error for a declared setting whose value this service cannot use: it names the
    /// variable, its value and what it accepts.
    pub fn invalid_setting(&self, name: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError {
            variable: variable_of(self.name, name),
            value: self.setting(name),
            expected: expected.into(),
        }
    }

    /// A declared setting parsed as `T`; a value that does not parse is an error naming the
    /// variable, its value and `expected`.
    pub fn setting_as<T: FromStr>(
        &self,
        name: &str,
        expected: &str,
    ) -> std::result::Result<T, ConfigError> {
        let value = self.setting(name);
        value.trim().parse().map_err(|_| ConfigError {
            variable: variable_of(self.name, name),
            value,
            expected: expected.to_string(),
        })
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

    /// Runs `handler` for every event of a durable consumer, for the life of the service, with
    /// the ack and retry policy of [`super::consumer`].
    pub fn consume<F, Fut>(&self, config: ConsumerConfig, handler: F)
    where
        F: Fn(Envelope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.consume_in_order(config, None, handler)
    }

    /// [`ServiceContext::consume`] for events about accounts ([`sterling_proto::account_of`]):
    /// one account's events one after another in the order delivered, up to
    /// [`ACCOUNTS_AT_ONCE`] accounts at once (the config's `concurrency` is set to it).
    pub fn consume_by_account<F, Fut>(&self, config: ConsumerConfig, handler: F)
    where
        F: Fn(Envelope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let config = ConsumerConfig {
            concurrency: ACCOUNTS_AT_ONCE,
            ..config
        };
        self.consume_in_order(config, Some(sterling_proto::account_of), handler)
    }

    /// [`ServiceContext::consume`], with the events of one key (`order`: an account's, say)
    /// handled one after another in the order delivered, and different keys up to
    /// `config.concurrency` at once.
    pub fn consume_in_order<F, Fut>(
        &self,
        config: ConsumerConfig,
        order: Option<OrderKey>,
        handler: F,
    ) where
        F: Fn(Envelope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.add_checker(Arc::new(BusChecker(self.platform.bus.clone())));
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(config.durable.clone());
        let consumer = Consumer {
            fail_point: format!("consumer::{}", config.durable),
            service: self.name,
            config,
            bus: self.platform.bus.clone(),
            store: self.store.clone(),
            records: processed_records(self.store.clone()),
            handler,
            order,
        };
        self.add_draining(crate::platform::background::spawn(
            consumer.run(self.stopping.clone()),
        ));
    }

    /// Runs a background task for the life of the service. At a graceful stop the task is
    /// given the drain bound to finish after [`ServiceContext::stopping`] fires, then aborted.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let span = tracing::info_span!("task", service = self.name);
        self.add_draining(tokio::spawn(task.instrument(span)));
    }

    /// Which instance of this service owns a piece of background work in its store,
    /// following the service's live instances in discovery ([`crate::ownership`]). On the
    /// embedded store, which no other process shares, this instance owns all of it.
    pub fn owners(&self) -> crate::ownership::Owners {
        if matches!(
            self.platform.config.storage,
            crate::platform::config::StorageBackend::Embedded
        ) {
            return crate::ownership::Owners::alone(&self.instance);
        }
        crate::ownership::Owners::follow(
            &self.instance,
            self.name,
            self.platform.discovery.clone(),
            self.stopping(),
        )
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
        self.health.add(checker);
    }
}
