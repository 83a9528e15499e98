//! customers: the public API of a customer's own profile, behind the gateway
//! (`/v1/customers/me`): their legal name, the name they like to be called and their date of
//! birth. A customer reads and writes their own profile only: there is no path that names
//! another customer.

pub mod handlers;
pub mod store;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use sterling_storage::Migration;
use sterling_template::platform::PublicApi;
use sterling_template::{Api, ServiceContext, ServiceDefinition};

use crate::store::ProfileStore;

/// The versioned migrations of the `sterling_customers` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(1 => "0001_customers.cql");

/// The customers service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: "customers",
    migrations: MIGRATIONS,
    settings: &[],
    depends_on: &[],
    // Part of the public API: the gateway alone calls it, for a customer.
    access: &[],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let profiles = Arc::new(ProfileStore::new(ctx.store.clone()));
    let router = Router::new()
        .route(
            "/v1/customers/me",
            get(handlers::get_profile).put(handlers::put_profile),
        )
        .with_state(profiles);
    Ok(Api::Public(PublicApi {
        router,
        prefixes: vec!["/v1/customers".into()],
    }))
}
