//! gRPC handlers of balance.

use sterling_proto::balance::v1::balance_server::Balance;
use sterling_proto::balance::v1::{AccountBalance, GetBalanceRequest};
use sterling_proto::common::v1::Money;
use sterling_storage::now_millis;
use sterling_template::Error;
use sterling_template::error::required_max;
use tonic::{Request, Response, Status};

use crate::store::BalanceStore;

/// The balance gRPC service.
pub struct BalanceHandlers {
    /// The read model.
    pub balances: BalanceStore,
}

#[tonic::async_trait]
impl Balance for BalanceHandlers {
    async fn get_balance(
        &self,
        request: Request<GetBalanceRequest>,
    ) -> Result<Response<AccountBalance>, Status> {
        let r = request.into_inner();
        let account_id = required_max("account_id", &r.account_id, 256)?;
        let snapshot = self.balances.snapshot(account_id).await?.ok_or_else(|| {
            Error::not_found("balance", "no balance of this account has arrived yet")
                .with_param("account_id", account_id)
        })?;
        let spent_today = self.balances.spent_on(account_id, now_millis()).await?;
        let available = snapshot
            .balance
            .checked_sub(snapshot.held)
            .ok_or_else(|| Error::internal("available out of range"))?;
        let money = |minor_units| {
            Some(Money {
                minor_units,
                currency: snapshot.currency.clone(),
            })
        };
        Ok(Response::new(AccountBalance {
            account_id: snapshot.account_id.clone(),
            balance: money(snapshot.balance),
            available: money(available),
            pending: money(snapshot.held),
            spent_today: money(spent_today),
            version: snapshot.version,
            changed_at_ms: snapshot.changed_at_ms,
        }))
    }
}
