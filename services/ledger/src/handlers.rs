//! gRPC handlers of the ledger.

use sterling_proto::ledger::v1::ledger_server::Ledger;
use sterling_proto::ledger::v1::{
    Account as AccountMessage, AccountKind as KindMessage, Balance as BalanceMessage,
    CreateAccountRequest, GetAccountRequest, GetBalanceRequest, GetHoldRequest,
    Hold as HoldMessage, HoldStatus as HoldStatusMessage, PlaceHoldRequest, ReleaseHoldRequest,
    TransferRequest, TransferResponse,
};
use sterling_template::error::required;
use sterling_template::{Error, money};
use tonic::{Request, Response, Status};

use crate::store::{Account, AccountKind, Book, Hold, HoldStatus, Transfer};

/// The ledger gRPC service.
pub struct LedgerHandlers {
    /// The book.
    pub book: Book,
}

fn hold_message(hold: Hold) -> HoldMessage {
    HoldMessage {
        hold_id: hold.hold_id,
        account_id: hold.account_id,
        amount: Some(money::to_proto(hold.amount)),
        status: match hold.status {
            HoldStatus::Active => HoldStatusMessage::Active,
            HoldStatus::Released => HoldStatusMessage::Released,
        } as i32,
    }
}

#[tonic::async_trait]
impl Ledger for LedgerHandlers {
    async fn create_account(
        &self,
        request: Request<CreateAccountRequest>,
    ) -> Result<Response<AccountMessage>, Status> {
        let r = request.into_inner();
        let account_id = required("account_id", &r.account_id)?;
        let currency = money::currency("currency", &r.currency)?;
        let kind = match KindMessage::try_from(r.kind) {
            Ok(KindMessage::Customer) => AccountKind::Customer,
            Ok(KindMessage::Internal) => AccountKind::Internal,
            _ => {
                return Err(Error::bad_request("kind", "kind must be customer or internal").into());
            }
        };
        let account = self.book.create_account(account_id, currency, kind).await?;
        Ok(Response::new(account_message(account)))
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<AccountMessage>, Status> {
        let r = request.into_inner();
        let account = self
            .book
            .account(required("account_id", &r.account_id)?)
            .await?;
        Ok(Response::new(account_message(account)))
    }

    async fn get_balance(
        &self,
        request: Request<GetBalanceRequest>,
    ) -> Result<Response<BalanceMessage>, Status> {
        let r = request.into_inner();
        let account = self
            .book
            .account(required("account_id", &r.account_id)?)
            .await?;
        let b = self.book.balance(&account).await?;
        Ok(Response::new(BalanceMessage {
            account_id: account.account_id,
            balance: Some(money::to_proto(b.balance)),
            held: Some(money::to_proto(b.held)),
            available: Some(money::to_proto(b.available)),
        }))
    }

    async fn transfer(
        &self,
        request: Request<TransferRequest>,
    ) -> Result<Response<TransferResponse>, Status> {
        let r = request.into_inner();
        let transfer = Transfer {
            transfer_id: required("transfer_id", &r.transfer_id)?.to_string(),
            debit_account_id: required("debit_account_id", &r.debit_account_id)?.to_string(),
            credit_account_id: required("credit_account_id", &r.credit_account_id)?.to_string(),
            amount: money::positive_from_proto("amount", r.amount.as_ref())?,
            description: r.description,
        };
        self.book.transfer(&transfer).await?;
        tracing::info!(transfer_id = %transfer.transfer_id, amount = %transfer.amount, "transfer completed");
        Ok(Response::new(TransferResponse {
            transfer_id: transfer.transfer_id,
            state: "completed".into(),
        }))
    }

    async fn place_hold(
        &self,
        request: Request<PlaceHoldRequest>,
    ) -> Result<Response<HoldMessage>, Status> {
        let r = request.into_inner();
        let amount = money::positive_from_proto("amount", r.amount.as_ref())?;
        let hold = self
            .book
            .place_hold(
                required("hold_id", &r.hold_id)?,
                required("account_id", &r.account_id)?,
                amount,
            )
            .await?;
        tracing::info!(hold_id = %hold.hold_id, amount = %hold.amount, "hold placed");
        Ok(Response::new(hold_message(hold)))
    }

    async fn release_hold(
        &self,
        request: Request<ReleaseHoldRequest>,
    ) -> Result<Response<HoldMessage>, Status> {
        let r = request.into_inner();
        let hold = self
            .book
            .release_hold(
                required("hold_id", &r.hold_id)?,
                required("account_id", &r.account_id)?,
            )
            .await?;
        tracing::info!(hold_id = %hold.hold_id, "hold released");
        Ok(Response::new(hold_message(hold)))
    }

    async fn get_hold(
        &self,
        request: Request<GetHoldRequest>,
    ) -> Result<Response<HoldMessage>, Status> {
        let r = request.into_inner();
        let hold_id = required("hold_id", &r.hold_id)?;
        let hold = self
            .book
            .hold(hold_id, required("account_id", &r.account_id)?)
            .await?
            .ok_or_else(|| {
                Error::not_found("hold", "no such hold").with_param("hold_id", hold_id)
            })?;
        Ok(Response::new(hold_message(hold)))
    }
}

/// An account as the contract shows it.
fn account_message(account: Account) -> AccountMessage {
    let kind = match account.kind {
        AccountKind::Customer => KindMessage::Customer,
        AccountKind::Internal => KindMessage::Internal,
    };
    AccountMessage {
        account_id: account.account_id,
        currency: account.currency.code().to_string(),
        kind: kind as i32,
    }
}
