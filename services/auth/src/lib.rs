//! auth: customers' credentials and sessions. Passwords are kept as argon2id hashes
//! ([`passwords`]); access and refresh tokens are opaque and kept as SHA-256 hashes
//! ([`tokens`]); refresh tokens are spent on use and a spent one presented again ends its
//! session ([`store`]). Only the gateway calls it.

pub mod handlers;
pub mod passwords;
pub mod store;
pub mod tokens;

use std::time::Duration;

use sterling_proto::auth::v1::auth_server::AuthServer;
use sterling_storage::Migration;
use sterling_template::{Api, Rule, ServiceContext, ServiceDefinition, Setting};

use crate::handlers::AuthHandlers;
use crate::store::{AuthStore, Lifetimes};

/// The versioned migrations of the `sterling_auth` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(1 => "0001_auth.cql");

/// The one caller of auth.
const GATEWAY: &str = "gateway";

/// The auth service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_proto::auth::v1::AUTH_SERVICE,
    migrations: MIGRATIONS,
    settings: &[
        Setting {
            name: "access_ttl_s",
            default: "900",
            help: "how long an access token lives, in seconds",
        },
        Setting {
            name: "refresh_ttl_s",
            default: "2592000",
            help: "how long a refresh token lives, in seconds (30 days)",
        },
    ],
    depends_on: &[],
    // The public API reaches auth through the gateway alone.
    access: &[
        Rule::new("SignUp", &[GATEWAY]),
        Rule::new("SignIn", &[GATEWAY]),
        Rule::new("Refresh", &[GATEWAY]),
        Rule::new("SignOut", &[GATEWAY]),
        Rule::new("Introspect", &[GATEWAY]),
    ],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let seconds = "a whole number of seconds";
    let lifetimes = Lifetimes {
        access: Duration::from_secs(ctx.setting_as("access_ttl_s", seconds)?),
        refresh: Duration::from_secs(ctx.setting_as("refresh_ttl_s", seconds)?),
    };
    let store = AuthStore::new(ctx.store.clone(), lifetimes);
    Ok(Api::grpc(AuthServer::new(AuthHandlers { store })))
}
