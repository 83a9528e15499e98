//! The operator's commands against a running bank, through the `sterling` binary as a person
//! runs it: a command checks the services it needs before it changes anything; amounts are in
//! major units; transactions come in pages with a cursor; seed registers a test device;
//! webhooks can be registered and listed; no bank under `--data` gets a hint.

mod common;

use std::path::Path;

use sterling::bank::{Bank, BankOptions};
use sterling_proto::ledger::v1::GetBalanceRequest;
use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_template::client::GrpcChannel;

use common::sterling_cli as sterling;

async fn bank(dir: &Path, except: &[&str]) -> Bank {
    let mut options = BankOptions::ephemeral(dir);
    options.except = except.iter().map(|s| s.to_string()).collect();
    // These tests read what the commands print, not how fast the bank decides: a test build's
    // first payments, with other tests starting banks beside it, can miss the 100 ms budget.
    options
        .config
        .settings
        .insert("STERLING_CARD_API_BUDGET_MS".into(), "10000".into());
    Bank::start(options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_checks_its_services_before_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let bank = bank(dir.path(), &["cards"]).await;
    let data = dir.path().to_path_buf();
    let (ok, text) = tokio::task::spawn_blocking(move || sterling(&data, &["seed", "--key", "k1"]))
        .await
        .unwrap();
    assert!(!ok, "{text}");
    assert!(text.contains("cards"), "names the missing service: {text}");
    assert!(text.contains("nothing was changed"), "{text}");
    // No account was opened.
    let channel = GrpcChannel::connect(
        bank.platform.discovery.clone(),
        "ledger",
        std::time::Duration::from_secs(2),
    )
    .await
    .unwrap()
    .calling_as(&bank.platform.identity, sterling_template::OPERATOR);
    let missing = LedgerClient::new(channel)
        .get_balance(GetBalanceRequest {
            account_id: "acc-k1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        sterling_template::Error::from(missing).code(),
        "not_found.account"
    );
    bank.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_is_served_in_major_units_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let bank = bank(dir.path(), &[]).await;
    let data = dir.path().to_path_buf();
    let run = move |args: Vec<String>| {
        let data = data.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                sterling(&data, &args)
            })
            .await
            .unwrap()
        }
    };
    let args = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let (ok, seeded) = run(args("seed --key op --amount 50.00")).await;
    assert!(ok, "{seeded}");
    assert!(seeded.contains("funded with GBP 50.00"), "{seeded}");
    let card = seeded
        .split_whitespace()
        .find(|w| w.starts_with("card_"))
        .unwrap()
        .to_string();
    let (_, devices) = run(args("devices list acc-op")).await;
    assert!(
        devices.contains("seed-op"),
        "seed registers a test device: {devices}"
    );

    for amount in ["3.50", "1.25"] {
        let (ok, paid) = run(args(&format!("pay --card {card} --amount {amount}"))).await;
        assert!(ok, "{paid}");
        assert!(
            paid.contains(&format!("held GBP {amount}")),
            "major units: {paid}"
        );
    }
    let (_, balance) = run(args("balance acc-op")).await;
    assert!(balance.contains("held GBP 4.75"), "{balance}");

    let (_, first) = run(args("transactions acc-op --limit 1")).await;
    assert!(first.contains("GBP 1.25"), "newest first: {first}");
    let cursor = first
        .split("--cursor ")
        .nth(1)
        .expect("a cursor to the next page")
        .trim()
        .to_string();
    let (_, second) = run(args(&format!(
        "transactions acc-op --limit 1 --cursor {cursor}"
    )))
    .await;
    assert!(second.contains("GBP 3.50"), "{second}");

    let (ok, registered) = run(args(
        "webhooks register --account acc-op --url https://receiver.example/hook --key wk",
    ))
    .await;
    assert!(ok, "{registered}");
    assert!(registered.contains("whsec_"), "{registered}");
    let (_, listed) = run(args("webhooks list acc-op")).await;
    assert!(listed.contains("https://receiver.example/hook"));
    assert!(!listed.contains("whsec_"), "the secret is shown once");
    bank.stop().await;
}

#[test]
fn no_bank_under_the_data_directory_gets_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = sterling(dir.path(), &["balance", "acc-x"]);
    assert!(!ok);
    assert!(text.contains("no bank found"), "{text}");
    assert!(text.contains("--data"), "{text}");
    assert!(!text.contains("Stack backtrace"), "{text}");
}

/// A token from `sterling identity mint` opens the doors its caller may open (what grpcurl is
/// given); the public key is the bank's; a deployed process given only the public key and its
/// token is who the token says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tokens_minted_by_the_tool_are_the_banks() {
    let dir = tempfile::tempdir().unwrap();
    let bank = bank(dir.path(), &[]).await;
    let data = dir.path().to_path_buf();
    let (ok, minted) = tokio::task::spawn_blocking(move || {
        let operator = sterling(&data, &["identity", "mint", "operator"]);
        let key = sterling(&data, &["identity", "public-key"]);
        (operator.0 && key.0, (operator.1, key.1))
    })
    .await
    .unwrap();
    assert!(ok, "{minted:?}");
    let (token, public_key) = (minted.0.trim().to_string(), minted.1.trim().to_string());
    assert_eq!(public_key, bank.platform.identity.public_key());
    let deployed = sterling_template::identity::Identity::given(&public_key, Some(&token)).unwrap();
    assert_eq!(deployed.verify(&token).unwrap().name(), "operator");
    let channel = GrpcChannel::connect(
        bank.platform.discovery.clone(),
        "ledger",
        std::time::Duration::from_secs(2),
    )
    .await
    .unwrap()
    .calling_as(
        &deployed,
        "ignored: a deployed process speaks as its token says",
    );
    let missing = LedgerClient::new(channel)
        .get_balance(GetBalanceRequest {
            account_id: "acc-none".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        sterling_template::Error::from(missing).code(),
        "not_found.account",
        "past the door, answered by the ledger"
    );
    bank.stop().await;
}
