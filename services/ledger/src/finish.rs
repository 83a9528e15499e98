//! Transfers their caller left half done, finished by the outbox's relay.
//!
//! A transfer's announcement (`ledger.transfer.completed`) is staged before its record is
//! claimed. If the caller stops before the transfer completes (a crash between its two
//! postings, a capture cut before the counter account's posting), the relay finds the staged
//! announcement after its grace period and asks [`TransferConfirm`], which looks at the
//! transfer's record: completed (publish), failed (discard), not claimed yet (wait: the
//! outbox drops it after its wait limit, nothing having moved), or pending: it finishes the
//! transfer as a retry would (each posting is idempotent on the transfer id) and publishes.
//! A capture is finished only once its hold's side is made (the change's entry says what it
//! posted); before that, nothing has moved and the caller's retry makes it.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use prost::Message;
use sterling_bus::Envelope;
use sterling_money::Money;
use sterling_proto::events::v1::TransferCompleted;
use sterling_storage::Row;
use sterling_template::outbox::{Confirm, Verdict};
use sterling_template::{Error, Result};

use crate::changes::change_entry;
use crate::store::{Book, Transfer, entry_key, is_refusal, posting_entry};

/// The relay's question about a staged transfer: the book that finishes it, set once the
/// book is built (the book's outbox is made with this first).
#[derive(Clone, Default)]
pub struct TransferConfirm {
    book: Arc<OnceLock<Book>>,
}

impl TransferConfirm {
    /// Finishes transfers with `book` from now on.
    pub fn finishing_with(&self, book: Book) {
        let _ = self.book.set(book);
    }
}

#[async_trait]
impl Confirm for TransferConfirm {
    async fn confirm(&self, envelope: &Envelope) -> Result<Verdict> {
        let event = TransferCompleted::decode(envelope.payload.as_slice())
            .map_err(|e| Error::internal(format!("staged transfer: {e}")))?;
        let Some(book) = self.book.get() else {
            return Ok(Verdict::Wait);
        };
        match book.finish_transfer(&event).await {
            Ok(verdict) => Ok(verdict),
            Err(e) if is_refusal(&e) => Ok(Verdict::Discard),
            Err(e) => {
                tracing::warn!(transfer_id = %event.transfer_id, error = %e, "could not finish a transfer yet");
                Ok(Verdict::Wait)
            }
        }
    }
}

impl Book {
    /// Finishes the transfer `event` announces, if its caller left it half done.
    pub async fn finish_transfer(&self, event: &TransferCompleted) -> Result<Verdict> {
        let key = Row::new().with("transfer_id", event.transfer_id.as_str());
        let Some(record) = self.store.get("transfers", &key).await? else {
            return Ok(Verdict::Wait);
        };
        match record.text("state")? {
            "completed" => return Ok(Verdict::Publish),
            "failed" => return Ok(Verdict::Discard),
            _ => {}
        }
        let debit = self.account(&event.debit_account_id).await?;
        let credit = self.account(&event.credit_account_id).await?;
        if event.hold_id.is_empty() {
            let transfer = Transfer {
                transfer_id: event.transfer_id.clone(),
                debit_account_id: event.debit_account_id.clone(),
                credit_account_id: event.credit_account_id.clone(),
                amount: Money::from_minor(event.amount, debit.currency),
                description: event.description.clone(),
                force: event.forced,
            };
            self.run_transfer(&transfer, &debit, &credit).await?;
            tracing::info!(transfer_id = %event.transfer_id, "finished a transfer left half done");
            return Ok(Verdict::Publish);
        }
        // A capture: finished once the hold's side is made.
        let change_key = entry_key(&debit.account_id, &change_entry(&event.transfer_id));
        let Some(change) = self.store.get("account_entries", &change_key).await? else {
            return Ok(Verdict::Wait);
        };
        let posted = change.i64("posted")?;
        let posting_key = entry_key(&debit.account_id, &posting_entry(&event.transfer_id));
        if let Some(row) = self.store.get("account_entries", &posting_key).await? {
            self.journal_row(&debit, &event.transfer_id, &row).await?;
        }
        self.post(
            &credit,
            &event.transfer_id,
            posted,
            &debit.account_id,
            false,
        )
        .await?;
        self.set_transfer_state(&event.transfer_id, "completed")
            .await?;
        tracing::info!(transfer_id = %event.transfer_id, "finished a capture left half done");
        Ok(Verdict::Publish)
    }
}
