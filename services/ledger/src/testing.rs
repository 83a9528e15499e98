//! A ledger for other services' tests: started on their platform with the customer accounts
//! they attach things to.

use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::ledger::v1::{AccountKind, CreateAccountRequest};
use sterling_template::OPERATOR;
use sterling_template::client::GrpcChannel;
use sterling_template::platform::{self, Platform, RunningService};

/// Starts the ledger on `platform` and opens each `(account_id, currency)` as a customer
/// account.
pub async fn start_with_customers(
    platform: &Platform,
    accounts: &[(&str, &str)],
) -> anyhow::Result<RunningService> {
    let running = platform::start(&crate::SERVICE, platform, "127.0.0.1:0".parse()?).await?;
    let channel = GrpcChannel::connect(
        platform.discovery.clone(),
        crate::SERVICE.name,
        std::time::Duration::from_secs(2),
    )
    .await?
    .calling_as(&platform.identity, OPERATOR);
    let mut ledger = LedgerClient::new(channel);
    for (account_id, currency) in accounts {
        ledger
            .create_account(CreateAccountRequest {
                account_id: account_id.to_string(),
                currency: currency.to_string(),
                kind: AccountKind::Customer as i32,
            })
            .await?;
    }
    Ok(running)
}
