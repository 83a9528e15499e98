//! The Sterling service template: everything a service gets by writing handlers only.
//!
//! - [`platform`]: configuration, engines, a service's definition and context, the event
//!   consumer, health, lifecycle and [`platform::main`] for a thin `main.rs`;
//! - [`server`]: the stack of layers around every server, one job each;
//! - [`client`]: channels to a service name through discovery, carrying the context, with
//!   retry and hedging policy read from the contracts;
//! - [`identity`]: who is calling: service identity tokens signed by the bank's authority;
//! - [`context`]: request id, deadline, W3C trace context, hop count;
//! - [`error`]: the one error type with typed classes and stable dotted codes, across gRPC
//!   and HTTP;
//! - [`by_month`]: an owner's rows in a partition per month, read back newest first;
//! - [`outbox`]: events published with the state change they announce, crash or not;
//! - [`discovery`]: registrations with TTL, embedded, static and NATS backends;
//! - [`ownership`]: which instance of a service owns a piece of background work;
//! - [`telemetry`]: JSON logs carrying request and trace ids, OpenTelemetry spans, Prometheus
//!   metrics.

pub mod by_month;
pub mod client;
pub mod context;
pub mod discovery;
pub mod error;
pub mod failpoint;
mod gathered;
pub mod identity;
pub mod money;
pub mod outbox;
pub mod ownership;
pub mod platform;
mod request_metrics;
pub mod server;
pub mod telemetry;
pub mod testing;

pub use error::{Error, ErrorClass, Result};
pub use identity::OPERATOR;
pub use platform::{Api, ServiceContext, ServiceDefinition, Setting};
pub use server::access::Rule;
