//! transactions: the customer-facing record of card payments, listed newest first.

pub mod handlers;
pub mod storage;

use sterling_proto::transactions::v1::transactions_server::TransactionsServer;
use sterling_storage::Migration;
use sterling_template::{Api, ServiceContext, ServiceDefinition};

use crate::handlers::TransactionsHandlers;
use crate::storage::TransactionStore;

/// The versioned migrations of the `sterling_transactions` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(1 => "0001_transactions.cql");

/// The transactions service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: "transactions",
    migrations: MIGRATIONS,
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let transactions = TransactionStore::new(ctx.store.clone());
    Ok(Api::Grpc(tonic::service::Routes::new(
        TransactionsServer::new(TransactionsHandlers { transactions }),
    )))
}
