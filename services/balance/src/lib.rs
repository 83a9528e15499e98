//! balance: the customer-facing balance, a read model named in the seeds. It keeps, in its own
//! keyspace, each account's latest ledger snapshot (from `ledger.balance.changed`, highest
//! version wins) and its card payments per UTC day (from the card decisions, moved by the
//! payment's later messages: clearings, reversals, expiries, refunds, force posts), and
//! answers balance, available, pending and spent today without asking the ledger. Its lag
//! behind the ledger is `sterling_balance_lag_seconds`.

pub mod handlers;
pub mod store;

use std::time::Duration;

use sterling_bus::ConsumerConfig;
use sterling_proto::balance::v1::balance_server::BalanceServer;
use sterling_proto::event_types as types;
use sterling_storage::Migration;
use sterling_template::{Api, OPERATOR, Rule, ServiceContext, ServiceDefinition};

use crate::handlers::BalanceHandlers;
use crate::store::BalanceStore;

/// The public API service that reads balances for an account's owner.
const ACCOUNTS: &str = "accounts";

/// The versioned migrations of the `sterling_balance` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(
    1 => "0001_balance.cql",
    2 => "0002_payment_life.cql",
    3 => "0003_snapshots.cql",
    4 => "0004_day_spending.cql",
);

/// The balance service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_proto::balance::v1::BALANCE_SERVICE,
    migrations: MIGRATIONS,
    settings: &[],
    depends_on: &[],
    access: &[
        // Read by the operator, and by accounts for the customer it checked owns the account.
        Rule::new("GetBalance", &[OPERATOR, ACCOUNTS]),
    ],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let balances = BalanceStore::new(ctx.store.clone());
    // Before anything reads or writes a snapshot or a day's spending.
    balances.move_legacy_snapshots().await?;
    balances.move_legacy_spending().await?;
    // Snapshots keep the highest version and payments are one row each: right in any order
    // and however often, so deliveries are handled several at once and not deduplicated.
    let config = ConsumerConfig {
        ack_wait: Duration::from_secs(10),
        concurrency: 8,
        deduplicate: false,
        ..ConsumerConfig::new(
            "balance",
            &[types::LEDGER_BALANCE_CHANGED, types::CARD_AUTHORISATION_ALL],
        )
    };
    let consumer = balances.clone();
    ctx.consume(config, move |envelope| {
        let balances = consumer.clone();
        async move { balances.apply_event(&envelope).await }
    });
    // The rest of a payment's life moves spent today, on a durable of its own (an existing
    // durable keeps the subjects it was made with).
    let payments = ConsumerConfig {
        ack_wait: Duration::from_secs(10),
        concurrency: 8,
        deduplicate: false,
        ..ConsumerConfig::new("balance-payments", &[types::CARD_PAYMENT_ALL])
    };
    let consumer = balances.clone();
    ctx.consume(payments, move |envelope| {
        let balances = consumer.clone();
        async move { balances.apply_event(&envelope).await }
    });
    Ok(Api::grpc(BalanceServer::new(BalanceHandlers { balances })))
}
