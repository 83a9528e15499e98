//! gRPC handlers of the ledger.

use sterling_proto::ledger::v1::ledger_server::Ledger;
use sterling_proto::ledger::v1::{
    Account as AccountMessage, AccountKind as KindMessage, Balance as BalanceMessage,
    CaptureHoldRequest, CreateAccountRequest, GetAccountRequest, GetBalanceRequest, GetHoldRequest,
    Hold as HoldMessage, HoldChange as HoldChangeMessage, HoldStatus as HoldStatusMessage,
    IncreaseHoldRequest, ListPostingsRequest, ListPostingsResponse, PlaceHoldRequest,
    Posting as PostingMessage, ReduceHoldRequest, ReleaseHoldRequest, TransferRequest,
    TransferResponse,
};
use sterling_template::error::required;
use sterling_template::{Error, money};
use tonic::{Request, Response, Status};

use crate::changes::{ChangeKind, HoldChange, HoldChangeRequest};
use crate::store::{Account, AccountKind, Book, Hold, HoldStatus, Transfer};

/// The ledger gRPC service.
pub struct LedgerHandlers {
    /// The book.
    pub book: Book,
}

fn status_message(status: HoldStatus) -> i32 {
    let message = match status {
        HoldStatus::Active => HoldStatusMessage::Active,
        HoldStatus::Released => HoldStatusMessage::Released,
        HoldStatus::Cleared => HoldStatusMessage::Cleared,
    };
    message as i32
}

fn hold_message(hold: Hold) -> HoldMessage {
    HoldMessage {
        hold_id: hold.hold_id,
        account_id: hold.account_id,
        amount: Some(money::to_proto(hold.amount)),
        status: status_message(hold.status),
        remaining: Some(money::to_proto(hold.remaining)),
        captured: Some(money::to_proto(hold.captured)),
    }
}

fn change_message(change: HoldChange) -> HoldChangeMessage {
    HoldChangeMessage {
        change_id: change.change_id,
        hold_id: change.hold_id,
        account_id: change.account_id,
        kind: change.kind,
        posted: Some(money::to_proto(change.posted)),
        released: Some(money::to_proto(change.released)),
        increased: Some(money::to_proto(change.increased)),
        remaining: Some(money::to_proto(change.remaining)),
        status: status_message(change.status),
        overdrawn: change.overdrawn,
    }
}

/// The ids every hold change names.
fn change_ids(
    change_id: &str,
    hold_id: &str,
    account_id: &str,
) -> Result<(String, String, String), Status> {
    Ok((
        required("change_id", change_id)?.to_string(),
        required("hold_id", hold_id)?.to_string(),
        required("account_id", account_id)?.to_string(),
    ))
}

impl LedgerHandlers {
    async fn change(
        &self,
        request: HoldChangeRequest,
    ) -> Result<Response<HoldChangeMessage>, Status> {
        let change = self.book.change_hold(&request).await?;
        tracing::info!(change_id = %change.change_id, hold_id = %change.hold_id, kind = %change.kind, posted = %change.posted, released = %change.released, "hold changed");
        Ok(Response::new(change_message(change)))
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
            overdrawn: b.overdrawn,
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
            force: r.force,
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

    async fn capture_hold(
        &self,
        request: Request<CaptureHoldRequest>,
    ) -> Result<Response<HoldChangeMessage>, Status> {
        let r = request.into_inner();
        let (change_id, hold_id, account_id) = change_ids(&r.change_id, &r.hold_id, &r.account_id)?;
        self.change(HoldChangeRequest {
            change_id,
            hold_id,
            account_id,
            kind: ChangeKind::Capture { last: r.r#final },
            amount: Some(money::positive_from_proto("amount", r.amount.as_ref())?),
            counter_account_id: required("counter_account_id", &r.counter_account_id)?.to_string(),
            over_capture_percent: r.over_capture_percent,
        })
        .await
    }

    async fn reduce_hold(
        &self,
        request: Request<ReduceHoldRequest>,
    ) -> Result<Response<HoldChangeMessage>, Status> {
        let r = request.into_inner();
        let (change_id, hold_id, account_id) = change_ids(&r.change_id, &r.hold_id, &r.account_id)?;
        let amount = match r.amount.as_ref() {
            Some(m) if m.minor_units != 0 => Some(money::positive_from_proto("amount", Some(m))?),
            _ => None,
        };
        self.change(HoldChangeRequest {
            change_id,
            hold_id,
            account_id,
            kind: ChangeKind::Reduce,
            amount,
            counter_account_id: String::new(),
            over_capture_percent: None,
        })
        .await
    }

    async fn increase_hold(
        &self,
        request: Request<IncreaseHoldRequest>,
    ) -> Result<Response<HoldChangeMessage>, Status> {
        let r = request.into_inner();
        let (change_id, hold_id, account_id) = change_ids(&r.change_id, &r.hold_id, &r.account_id)?;
        self.change(HoldChangeRequest {
            change_id,
            hold_id,
            account_id,
            kind: ChangeKind::Increase,
            amount: Some(money::positive_from_proto("amount", r.amount.as_ref())?),
            counter_account_id: String::new(),
            over_capture_percent: None,
        })
        .await
    }

    async fn list_postings(
        &self,
        request: Request<ListPostingsRequest>,
    ) -> Result<Response<ListPostingsResponse>, Status> {
        let r = request.into_inner();
        let day = required("day", &r.day)?;
        let well_formed = day.len() == 10
            && day.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        if !well_formed {
            return Err(Error::bad_request("day", "day must be YYYY-MM-DD").into());
        }
        let account = self
            .book
            .account(required("account_id", &r.account_id)?)
            .await?;
        let postings = self.book.postings(&account, day).await?;
        Ok(Response::new(ListPostingsResponse {
            postings: postings
                .into_iter()
                .map(|p| PostingMessage {
                    transfer_id: p.transfer_id,
                    amount: Some(money::to_proto(p.amount)),
                    counterparty: p.counterparty,
                    created_at_ms: p.created_at_ms,
                })
                .collect(),
        }))
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
