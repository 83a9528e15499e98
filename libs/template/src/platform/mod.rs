//! What a service is given and how it is run, one concept per module:
//!
//! - [`background`]: the lower-priority runtime event consumers run on;
//! - [`config`]: every `STERLING_*` variable, parsed once and strictly;
//! - [`engines`]: discovery, the bus and each service's store, opened from the configuration;
//! - [`service`]: a service's definition and the context its builder is handed;
//! - [`consumer`]: the event consumer and its ack and retry policy;
//! - [`dead_letters`]: the operator's gRPC for the events a service's consumers gave up on;
//! - [`health`]: in-band checks and the gRPC health service;
//! - [`lifecycle`]: start, register, heartbeat, announce stopping, drain, deregister;
//! - [`process`]: `main` for a service's 3-line `main.rs`, and signals.

pub mod background;
pub mod config;
pub mod consumer;
pub mod dead_letters;
pub mod engines;
pub mod health;
pub mod lifecycle;
pub mod process;
pub mod service;

pub use config::{BusSpec, ConfigError, DiscoverySpec, LogFormat, PlatformConfig, StorageBackend};
pub use consumer::OrderKey;
pub use engines::{Platform, open_discovery, open_store};
pub use health::Checker;
pub use lifecycle::{RunningService, start, start_with};
pub use process::{main, shutdown_signal};
pub use service::{
    Api, GrpcApi, PUBLIC_API, PublicApi, ServiceContext, ServiceDefinition, Setting,
};
