//! gRPC handlers of cards.

use sterling_proto::cards::v1::cards_server::Cards;
use sterling_proto::cards::v1::{
    Card as CardMessage, CardStatus as StatusMessage, FreezeCardRequest, GetCardRequest,
    IssueCardRequest, UnfreezeCardRequest,
};
use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_template::client::GrpcChannel;
use sterling_template::error::required;
use sterling_template::{Error, money};
use tonic::{Request, Response, Status};

use crate::store::{Card, CardStatus, CardStore};

/// The cards gRPC service.
pub struct CardsHandlers {
    /// Card records.
    pub cards: CardStore,
    /// The ledger, to issue cards on its customer accounts only.
    pub ledger: LedgerClient<GrpcChannel>,
}

fn to_message(card: Card) -> CardMessage {
    CardMessage {
        token: card.token,
        account_id: card.account_id,
        currency: card.currency,
        status: match card.status {
            CardStatus::Active => StatusMessage::Active,
            CardStatus::Frozen => StatusMessage::Frozen,
        } as i32,
        last_four: card.last_four,
        created_at_ms: card.created_at_ms,
    }
}

#[tonic::async_trait]
impl Cards for CardsHandlers {
    async fn issue_card(
        &self,
        request: Request<IssueCardRequest>,
    ) -> Result<Response<CardMessage>, Status> {
        let r = request.into_inner();
        let key = required("idempotency_key", &r.idempotency_key)?;
        let account_id = required("account_id", &r.account_id)?;
        let currency = money::currency("currency", &r.currency)?;
        let account = ledger::client::customer_account(&self.ledger, account_id).await?;
        if account.currency != currency.code() {
            let why = format!("account {account_id} holds {}", account.currency);
            return Err(Error::bad_request("currency", why).into());
        }
        let card = self.cards.issue(key, account_id, currency.code()).await?;
        tracing::info!(token = %card.token, account_id, "card issued");
        Ok(Response::new(to_message(card)))
    }

    async fn get_card(
        &self,
        request: Request<GetCardRequest>,
    ) -> Result<Response<CardMessage>, Status> {
        let token = request.into_inner().token;
        // A broken cards service, for the acceptance runner's tests.
        sterling_template::failpoint::step("cards::get_card").await?;
        let card = self.cards.get(required("token", &token)?).await?;
        Ok(Response::new(to_message(card)))
    }

    async fn freeze_card(
        &self,
        request: Request<FreezeCardRequest>,
    ) -> Result<Response<CardMessage>, Status> {
        let token = request.into_inner().token;
        let card = self
            .cards
            .set_status(required("token", &token)?, CardStatus::Frozen)
            .await?;
        tracing::info!(token = %card.token, "card frozen");
        Ok(Response::new(to_message(card)))
    }

    async fn unfreeze_card(
        &self,
        request: Request<UnfreezeCardRequest>,
    ) -> Result<Response<CardMessage>, Status> {
        let token = request.into_inner().token;
        let card = self
            .cards
            .set_status(required("token", &token)?, CardStatus::Active)
            .await?;
        tracing::info!(token = %card.token, "card unfrozen");
        Ok(Response::new(to_message(card)))
    }
}
