//! ledger: the double-entry book of the bank. Accounts, immutable postings, holds; every change
//! keyed by an id the caller supplies, every balance change a compare-and-set, announced on the
//! bus as `ledger.balance.changed` ([`announce`]); every transfer announced once complete as
//! `ledger.transfer.completed`, and finished by the outbox's relay if its caller stopped half
//! way ([`finish`]).

pub mod announce;
pub mod changes;
pub mod client;
pub mod finish;
pub mod handlers;
pub mod holds;
pub mod journal;
pub mod store;
pub mod testing;

use sterling_proto::ledger::v1::ledger_server::LedgerServer;
use sterling_storage::Migration;
use sterling_template::{Api, OPERATOR, Rule, ServiceContext, ServiceDefinition, Setting};

use std::sync::Arc;

use crate::announce::{Announcer, LedgerConfirm, VersionConfirm};
use crate::finish::TransferConfirm;
use crate::handlers::LedgerHandlers;
use crate::store::Book;

const ACCOUNTS: &str = "accounts";
const CARDS: &str = sterling_proto::cards::v1::CARDS_SERVICE;
const PUSH: &str = sterling_proto::push::v1::PUSH_SERVICE;
const WEBHOOKS: &str = sterling_proto::webhooks::v1::WEBHOOKS_SERVICE;

/// The versioned migrations of the `sterling_ledger` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(
    1 => "0001_ledger.cql",
    2 => "0002_balance_events.cql",
    3 => "0003_hold_changes.cql",
    4 => "0004_journal_and_shards.cql",
    5 => "0005_captured.cql",
);

/// The ledger service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_proto::ledger::v1::LEDGER_SERVICE,
    migrations: MIGRATIONS,
    settings: &[Setting {
        name: "shard_internal_accounts",
        default: "true",
        help: "post the bank's own accounts on 16 shards (false: on one compare-and-set, to measure)",
    }],
    depends_on: &[],
    access: &[
        // Holds are card-processing's alone; accounts open and money moves on the operator's
        // word or the accounts service's (for its customer); cards, push and webhooks check an
        // account exists before attaching to it.
        // card-processing opens the card scheme's settlement account of a currency.
        Rule::new(
            "CreateAccount",
            &[
                OPERATOR,
                ACCOUNTS,
                sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE,
            ],
        ),
        Rule::new("GetAccount", &[OPERATOR, CARDS, PUSH, WEBHOOKS]),
        Rule::new(
            "GetBalance",
            &[
                OPERATOR,
                sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE,
            ],
        ),
        // card-processing moves money for refunds and force posts.
        Rule::new(
            "Transfer",
            &[
                OPERATOR,
                ACCOUNTS,
                sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE,
            ],
        ),
        Rule::new(
            "PlaceHold",
            &[sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE],
        ),
        Rule::new(
            "ReleaseHold",
            &[sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE],
        ),
        Rule::new(
            "CaptureHold",
            &[sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE],
        ),
        Rule::new(
            "ReduceHold",
            &[sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE],
        ),
        Rule::new(
            "IncreaseHold",
            &[sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE],
        ),
        Rule::new("ListPostings", &[OPERATOR]),
        Rule::new(
            "GetHold",
            &[
                sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE,
                OPERATOR,
            ],
        ),
    ],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let transfers = TransferConfirm::default();
    let outbox = ctx.outbox(Arc::new(LedgerConfirm {
        versions: VersionConfirm {
            store: ctx.store.clone(),
        },
        transfers: transfers.clone(),
    }));
    let shard: bool = ctx.setting_as("shard_internal_accounts", "true or false")?;
    let book = Book::new(ctx.store.clone())
        .announcing(Announcer::new(outbox))
        .sharding_internal_accounts(shard);
    transfers.finishing_with(book.clone());
    Ok(Api::grpc(LedgerServer::new(LedgerHandlers { book })))
}
