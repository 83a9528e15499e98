//! cards through its gRPC API on the embedded engines: issuing is idempotent on the caller's
//! key and a key reused for another account is refused; freezing and unfreezing are
//! idempotent; bad input names the field.

use std::time::Duration;

use sterling_proto::cards::v1::cards_client::CardsClient;
use sterling_proto::cards::v1::{
    CardStatus, FreezeCardRequest, GetCardRequest, IssueCardRequest, UnfreezeCardRequest,
};
use sterling_template::client::GrpcChannel;
use sterling_template::platform::{self, Platform, PlatformConfig, RunningService};

struct Cards {
    client: CardsClient<GrpcChannel>,
    running: RunningService,
    _ledger: RunningService,
    _dir: tempfile::TempDir,
}

async fn start() -> Cards {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.path().to_path_buf();
    let platform = Platform::embedded(config).unwrap();
    let ledger = ledger::testing::start_with_customers(
        &platform,
        &[("acc-1", "GBP"), ("acc-2", "GBP"), ("acc-eur", "EUR")],
    )
    .await
    .unwrap();
    let running = platform::start(&cards::SERVICE, &platform, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let channel = GrpcChannel::connect(platform.discovery.clone(), "cards", Duration::from_secs(2))
        .await
        .unwrap()
        .calling_as(&platform.identity, sterling_template::OPERATOR);
    Cards {
        client: CardsClient::new(channel),
        running,
        _ledger: ledger,
        _dir: dir,
    }
}

fn code(status: tonic::Status) -> String {
    sterling_template::Error::from(status).code().to_string()
}

fn issue(key: &str, account: &str, currency: &str) -> IssueCardRequest {
    IssueCardRequest {
        idempotency_key: key.into(),
        account_id: account.into(),
        currency: currency.into(),
    }
}

#[tokio::test]
async fn issuing_is_idempotent_on_the_key() {
    let mut cards = start().await;
    let first = cards
        .client
        .issue_card(issue("k1", "acc-1", "GBP"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status(), CardStatus::Active);
    assert_eq!(first.last_four.len(), 4);
    let repeat = cards
        .client
        .issue_card(issue("k1", "acc-1", "GBP"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        repeat.token, first.token,
        "a repeat answers the card issued"
    );
    let other = cards
        .client
        .issue_card(issue("k1", "acc-2", "GBP"))
        .await
        .unwrap_err();
    assert_eq!(code(other), "conflict.idempotency_key");
    let read = cards
        .client
        .get_card(GetCardRequest {
            token: first.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.account_id, "acc-1");
    cards.running.stop().await;
}

#[tokio::test]
async fn bad_input_names_the_field_and_stores_nothing() {
    let mut cards = start().await;
    let cases = [
        (issue("", "acc-1", "GBP"), "bad_request.idempotency_key"),
        (issue("k", "", "GBP"), "bad_request.account_id"),
        (issue("k", "acc-1", "XXX"), "bad_request.currency"),
        (issue("k", "acc-eur", "GBP"), "bad_request.currency"),
        (issue("k", "acc-none", "GBP"), "not_found.account"),
        (
            issue(&"k".repeat(129), "acc-1", "GBP"),
            "bad_request.idempotency_key",
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(
            code(cards.client.issue_card(request).await.unwrap_err()),
            expected
        );
    }
    let missing = cards
        .client
        .get_card(GetCardRequest {
            token: "card_nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(missing), "not_found.card");
    // The key refused above was not spent.
    let card = cards
        .client
        .issue_card(issue("k", "acc-1", "GBP"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(card.currency, "GBP");
    cards.running.stop().await;
}

#[tokio::test]
async fn freezing_and_unfreezing_are_idempotent() {
    let mut cards = start().await;
    let card = cards
        .client
        .issue_card(issue("k2", "acc-eur", "EUR"))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        let frozen = cards
            .client
            .freeze_card(FreezeCardRequest {
                token: card.token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(frozen.status(), CardStatus::Frozen);
    }
    for _ in 0..2 {
        let active = cards
            .client
            .unfreeze_card(UnfreezeCardRequest {
                token: card.token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(active.status(), CardStatus::Active);
    }
    let missing = cards
        .client
        .freeze_card(FreezeCardRequest {
            token: "card_nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(missing), "not_found.card");
    cards.running.stop().await;
}
