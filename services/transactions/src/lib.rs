//! transactions: the customer-facing record of card payments, listed newest first, with the
//! merchant's name, category and logo once `transaction.enriched` arrives.

pub mod handlers;
pub mod store;

use prost::Message;
use sterling_bus::ConsumerConfig;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::CardPaymentUpdated;
use sterling_proto::events::v1::TransactionEnriched;
use sterling_proto::transactions::v1::transactions_server::TransactionsServer;
use sterling_storage::Migration;
use sterling_template::{Api, Error, OPERATOR, Rule, ServiceContext, ServiceDefinition};

use crate::handlers::TransactionsHandlers;
use crate::store::TransactionStore;

/// The versioned migrations of the `sterling_transactions` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(
    1 => "0001_transactions.cql",
    2 => "0002_payment_life.cql",
    3 => "0003_transactions_by_month.cql",
);

/// The transactions service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_proto::transactions::v1::TRANSACTIONS_SERVICE,
    migrations: MIGRATIONS,
    settings: &[],
    depends_on: &[],
    access: &[
        // Written by card-processing alone; read by it, the operator and (for its customer) the
        // accounts service.
        Rule::new(
            "RecordPending",
            &[sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE],
        ),
        Rule::new(
            "ReleaseTransaction",
            &[sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE],
        ),
        Rule::new(
            "GetTransaction",
            &[
                sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE,
                OPERATOR,
            ],
        ),
        Rule::new("ListTransactions", &[OPERATOR, "accounts"]),
    ],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let transactions = TransactionStore::new(ctx.store.clone());
    transactions.move_first_table().await?;
    let enrichments = transactions.clone();
    ctx.consume_by_account(
        ConsumerConfig::new("transactions", &[types::TRANSACTION_ENRICHED]),
        move |envelope| {
            let transactions = enrichments.clone();
            async move {
                let e = TransactionEnriched::decode(envelope.payload.as_slice())
                    .map_err(|e| Error::bad_request("event", e.to_string()))?;
                let m = e.merchant.unwrap_or_default();
                transactions
                    .enrich(
                        &e.account_id,
                        &e.transaction_id,
                        &m.name,
                        &m.category,
                        &m.logo_url,
                    )
                    .await?;
                Ok(())
            }
        },
    );
    let payments = transactions.clone();
    ctx.consume_by_account(
        ConsumerConfig::new("transactions-payments", &[types::CARD_PAYMENT_ALL]),
        move |envelope| {
            let transactions = payments.clone();
            async move {
                let e = CardPaymentUpdated::decode(envelope.payload.as_slice())
                    .map_err(|e| Error::bad_request("event", e.to_string()))?;
                transactions.apply_payment(&e).await
            }
        },
    );
    Ok(Api::grpc(TransactionsServer::new(TransactionsHandlers {
        transactions,
    })))
}
