//! cards: issues cards against ledger accounts, looks them up for authorisations, freezes and
//! unfreezes them.

pub mod handlers;
pub mod store;

use sterling_proto::cards::v1::cards_server::CardsServer;
use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_storage::Migration;
use sterling_template::{Api, OPERATOR, Rule, ServiceContext, ServiceDefinition};

use crate::handlers::CardsHandlers;
use crate::store::CardStore;

/// The versioned migrations of the `sterling_cards` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(1 => "0001_cards.cql");

/// The cards service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_proto::cards::v1::CARDS_SERVICE,
    migrations: MIGRATIONS,
    settings: &[],
    depends_on: &[sterling_proto::ledger::v1::LEDGER_SERVICE],
    access: &[
        // Issued, frozen and unfrozen by the operator or, for its customer, the accounts
        // service; read by card-processing to authorise.
        Rule::new("IssueCard", &[OPERATOR, "accounts"]),
        Rule::new(
            "GetCard",
            &[
                sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE,
                OPERATOR,
                "accounts",
            ],
        ),
        Rule::new("FreezeCard", &[OPERATOR, "accounts"]),
        Rule::new("UnfreezeCard", &[OPERATOR, "accounts"]),
    ],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let cards = CardStore::new(ctx.store.clone());
    let ledger = LedgerClient::new(
        ctx.channel(sterling_proto::ledger::v1::LEDGER_SERVICE)
            .await?,
    );
    Ok(Api::grpc(CardsServer::new(CardsHandlers { cards, ledger })))
}
