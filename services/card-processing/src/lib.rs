//! card-processing: decides card authorisations within the processor's budget. Checks the card
//! (cards), converts the amount into the account's currency (fx), places the hold (ledger) and
//! records the pending transaction (transactions); idempotent on the processor's authorisation
//! id; on a deadline miss it declines and releases. Every decision is announced on the bus
//! (`card.authorisation.approved` / `.declined`) through the outbox.
//!
//! Layout: [`authorisation`] the request and its fingerprint; [`storage`] the decision's
//! state machine; [`decide`] the saga; [`announce`] decision events; [`recovery`] compensation, the sweeper and card-api's
//! stand-in declines; [`handlers`] the gRPC surface.

pub mod announce;
pub mod authorisation;
pub mod decide;
pub mod expiry;
pub mod handlers;
pub mod payment_events;
pub mod payment_store;
pub mod payments;
pub mod recovery;
pub mod store;

use sterling_proto::cardprocessing::v1::card_processing_server::CardProcessingServer;
use sterling_proto::cards::v1::cards_client::CardsClient;
use sterling_proto::fx::v1::fx_client::FxClient;
use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::transactions::v1::transactions_client::TransactionsClient;
use sterling_storage::Migration;
use sterling_template::{Api, OPERATOR, Rule, ServiceContext, ServiceDefinition, Setting};

use std::time::Duration;

use sterling_bus::ConsumerConfig;
use sterling_proto::event_types as types;

use std::sync::Arc;

use crate::announce::Announcer;
use crate::decide::Decider;
use crate::expiry::ExpiryJob;
use crate::handlers::CardProcessingHandlers;
use crate::payment_store::PaymentStore;
use crate::payments::{PaymentConfirm, PaymentRules, Payments};
use crate::recovery::{SweepConfig, Sweeper};
use crate::store::AuthorisationStore;

/// The versioned migrations of the `sterling_card_processing` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(
    1 => "0001_authorisations.cql",
    2 => "0002_decision_machine.cql",
    3 => "0003_payments.cql",
);

/// The card-processing service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE,
    migrations: MIGRATIONS,
    settings: &[
        Setting {
            name: "sweep_interval_ms",
            default: "1000",
            help: "how often the sweeper finishes abandoned authorisations",
        },
        Setting {
            name: "authorisation_expiry_ms",
            default: "604800000",
            help: "how long an approved authorisation holds funds uncleared (7 days)",
        },
        Setting {
            name: "expiry_interval_ms",
            default: "10000",
            help: "how often the expiry job looks for expired authorisations",
        },
        Setting {
            name: "over_capture_percent",
            default: "20",
            help: "how far clearings may exceed the authorised amount (tips, fuel)",
        },
        Setting {
            name: "sweep_grace_ms",
            default: "1000",
            help: "how long past its deadline a claim is left to its saga",
        },
    ],
    depends_on: &[
        sterling_proto::cards::v1::CARDS_SERVICE,
        sterling_proto::fx::v1::FX_SERVICE,
        sterling_proto::ledger::v1::LEDGER_SERVICE,
        sterling_proto::transactions::v1::TRANSACTIONS_SERVICE,
    ],
    access: &[
        // Decisions are asked for by card-api alone.
        Rule::new("Authorise", &["card-api"]),
        Rule::new("GetAuthorisation", &["card-api", OPERATOR]),
        // Later messages come from the processor through card-api, or from the operator.
        Rule::new("ApplyPaymentMessage", &["card-api", OPERATOR]),
        Rule::new("GetPayment", &["card-api", OPERATOR]),
    ],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    // Settings first: a bad value stops the service before it connects to anything.
    let sweep = SweepConfig {
        interval: Duration::from_millis(
            ctx.setting_as("sweep_interval_ms", "a whole number of milliseconds")?,
        ),
        grace: Duration::from_millis(
            ctx.setting_as("sweep_grace_ms", "a whole number of milliseconds")?,
        ),
    };
    let expiry = Duration::from_millis(
        ctx.setting_as("authorisation_expiry_ms", "a whole number of milliseconds")?,
    );
    let expiry_interval = Duration::from_millis(
        ctx.setting_as("expiry_interval_ms", "a whole number of milliseconds")?,
    );
    let rules = PaymentRules {
        over_capture_percent: ctx.setting_as("over_capture_percent", "a whole percentage")?,
    };
    let decider = Decider {
        store: AuthorisationStore::new(ctx.store.clone()).expiring_after(expiry),
        announcer: Announcer::new(ctx.platform.bus.clone()),
        cards: CardsClient::new(
            ctx.channel(sterling_proto::cards::v1::CARDS_SERVICE)
                .await?,
        ),
        fx: FxClient::new(ctx.channel(sterling_proto::fx::v1::FX_SERVICE).await?),
        ledger: LedgerClient::new(
            ctx.channel(sterling_proto::ledger::v1::LEDGER_SERVICE)
                .await?,
        ),
        transactions: TransactionsClient::new(
            ctx.channel(sterling_proto::transactions::v1::TRANSACTIONS_SERVICE)
                .await?,
        ),
    };
    let sweeper = Sweeper::new(decider.clone(), ctx.store.clone(), sweep);
    ctx.spawn(sweeper.run(ctx.stopping()));
    let payment_store = PaymentStore::new(ctx.store.clone());
    let outbox = ctx.outbox(Arc::new(PaymentConfirm {
        store: payment_store.clone(),
    }));
    let payments = Payments::new(decider.clone(), payment_store, outbox, rules);
    ctx.spawn(ExpiryJob::new(payments.clone(), expiry_interval).run(ctx.stopping()));
    let stand_ins = decider.clone();
    // A stand-in decline is a command that must apply, however long an outage lasts: retried
    // every few seconds for hours rather than dead-lettered after a few minutes. A delivery
    // in hand when an instance dies comes back after 5 s (not the default 30 s): until it is
    // applied an approval stands against the decline the processor heard.
    let stand_in_consumer = ConsumerConfig {
        ack_wait: Duration::from_secs(5),
        max_deliver: 10_000,
        backoff: [100, 500, 1_000, 2_000, 5_000]
            .into_iter()
            .map(Duration::from_millis)
            .collect(),
        ..ConsumerConfig::new("card-processing", &[types::CARD_AUTHORISATION_STOOD_IN])
    };
    ctx.consume(stand_in_consumer, move |envelope| {
        let decider = stand_ins.clone();
        async move { decider.handle_stand_in(envelope).await }
    });
    Ok(Api::grpc(CardProcessingServer::new(
        CardProcessingHandlers { decider, payments },
    )))
}
