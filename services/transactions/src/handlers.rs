//! gRPC handlers of transactions.

use sterling_proto::transactions::v1::transactions_server::Transactions;
use sterling_proto::transactions::v1::{
    GetTransactionRequest, ListTransactionsRequest, ListTransactionsResponse, RecordPendingRequest,
    ReleaseTransactionRequest, Transaction, TransactionStatus,
};
use sterling_template::error::required;
use sterling_template::{Error, money};
use tonic::{Request, Response, Status};

use crate::store::{TransactionRecord, TransactionStore};

/// Largest page a list returns.
pub const MAX_PAGE: usize = 100;

/// The transactions gRPC service.
pub struct TransactionsHandlers {
    /// Transaction records.
    pub transactions: TransactionStore,
}

fn to_message(r: TransactionRecord) -> Transaction {
    let status = match r.status.as_str() {
        "pending" => TransactionStatus::Pending,
        "settled" => TransactionStatus::Settled,
        "released" => TransactionStatus::Released,
        _ => TransactionStatus::Unspecified,
    };
    Transaction {
        transaction_id: r.transaction_id,
        account_id: r.account_id,
        authorisation_id: r.authorisation_id,
        amount: Some(sterling_proto::common::v1::Money {
            minor_units: r.amount,
            currency: r.currency,
        }),
        local_amount: Some(sterling_proto::common::v1::Money {
            minor_units: r.local_amount,
            currency: r.local_currency,
        }),
        merchant_descriptor: r.merchant_descriptor,
        mcc: r.mcc,
        status: status as i32,
        created_at_ms: r.created_at_ms,
        card_token: r.card_token,
        merchant_name: r.merchant_name,
        category: r.category,
        logo_url: r.logo_url,
        kind: r.kind,
    }
}

fn uuid_text(field: &str, value: &str) -> Result<String, Error> {
    uuid::Uuid::parse_str(value)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| {
            Error::bad_request(field, format!("{field} must be a UUID")).with_param("field", field)
        })
}

#[tonic::async_trait]
impl Transactions for TransactionsHandlers {
    async fn record_pending(
        &self,
        request: Request<RecordPendingRequest>,
    ) -> Result<Response<Transaction>, Status> {
        let t = request
            .into_inner()
            .transaction
            .ok_or_else(|| Error::bad_request("transaction", "transaction is required"))?;
        let amount = money::positive_from_proto("amount", t.amount.as_ref())?;
        let local = money::positive_from_proto("local_amount", t.local_amount.as_ref())?;
        let record = TransactionRecord {
            transaction_id: uuid_text("transaction_id", &t.transaction_id)?,
            account_id: required("account_id", &t.account_id)?.to_string(),
            authorisation_id: required("authorisation_id", &t.authorisation_id)?.to_string(),
            card_token: t.card_token,
            amount: amount.minor_units(),
            currency: amount.currency().code().to_string(),
            local_amount: local.minor_units(),
            local_currency: local.currency().code().to_string(),
            merchant_descriptor: t.merchant_descriptor,
            mcc: t.mcc,
            status: "pending".into(),
            merchant_name: String::new(),
            category: String::new(),
            logo_url: String::new(),
            kind: "card_payment".into(),
            created_at_ms: if t.created_at_ms > 0 {
                t.created_at_ms
            } else {
                sterling_storage::now_millis()
            },
        };
        let stored = self.transactions.record(&record).await?;
        tracing::info!(transaction_id = %stored.transaction_id, "pending transaction recorded");
        Ok(Response::new(to_message(stored)))
    }

    async fn release_transaction(
        &self,
        request: Request<ReleaseTransactionRequest>,
    ) -> Result<Response<Transaction>, Status> {
        let r = request.into_inner();
        let id = uuid_text("transaction_id", &r.transaction_id)?;
        let released = self
            .transactions
            .release(
                &id,
                required("account_id", &r.account_id)?,
                required("authorisation_id", &r.authorisation_id)?,
            )
            .await?;
        tracing::info!(transaction_id = %id, "transaction released");
        Ok(Response::new(to_message(released)))
    }

    async fn get_transaction(
        &self,
        request: Request<GetTransactionRequest>,
    ) -> Result<Response<Transaction>, Status> {
        let id = uuid_text("transaction_id", &request.into_inner().transaction_id)?;
        Ok(Response::new(to_message(self.transactions.get(&id).await?)))
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsResponse>, Status> {
        let r = request.into_inner();
        let account_id = required("account_id", &r.account_id)?;
        let limit = match r.limit {
            0 => 20,
            n => (n as usize).min(MAX_PAGE),
        };
        let cursor = if r.page_token.is_empty() {
            None
        } else {
            Some(uuid_text("page_token", &r.page_token)?)
        };
        let page = self
            .transactions
            .list(account_id, limit, cursor.as_deref())
            .await?;
        let next_page_token = if page.len() == limit {
            page.last()
                .map(|t| t.transaction_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListTransactionsResponse {
            transactions: page.into_iter().map(to_message).collect(),
            next_page_token,
        }))
    }
}
