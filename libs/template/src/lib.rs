//! The Sterling service template: everything a service gets by writing handlers only.
//!
//! - [`platform`]: configuration, a service's store, lifecycle (start, register, heartbeat,
//!   health checks, drain, deregister) and [`platform::main`] for a thin `main.rs`;
//! - [`server`]: the layer that gives each request its context, span, log line and panic guard;
//! - [`client`]: channels to a service name through discovery, carrying the context;
//! - [`context`]: request id, deadline, W3C trace context, hop count;
//! - [`error`]: the one error type with stable dotted codes, across gRPC and HTTP;
//! - [`outbox`]: events published with the state change they announce, crash or not;
//! - [`discovery`]: registrations with TTL, embedded and static backends;
//! - [`telemetry`]: JSON logs carrying request and trace ids.

pub mod client;
pub mod context;
pub mod discovery;
pub mod error;
pub mod failpoint;
pub mod money;
pub mod outbox;
pub mod platform;
mod request_metrics;
pub mod server;
pub mod signature;
pub mod telemetry;
pub mod testing;

pub use error::{Error, Result};
pub use platform::{Api, ServiceContext, ServiceDefinition};
