//! The ledger as other services ask it: one place that says what a customer's account is, so
//! cards, push and webhooks refuse to attach anything to an account that does not exist.

use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::ledger::v1::{Account, AccountKind, GetAccountRequest};
use sterling_template::client::GrpcChannel;
use sterling_template::{Error, Result};

/// The customer account `account_id`: `not_found.account` if the ledger has none, or if it is
/// one of the bank's own accounts (nothing a customer holds).
pub async fn customer_account(
    ledger: &LedgerClient<GrpcChannel>,
    account_id: &str,
) -> Result<Account> {
    let account = ledger
        .clone()
        .get_account(GetAccountRequest {
            account_id: account_id.to_string(),
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    if account.kind != AccountKind::Customer as i32 {
        return Err(Error::not_found(
            "account",
            format!("no customer account {account_id}"),
        ));
    }
    Ok(account)
}
