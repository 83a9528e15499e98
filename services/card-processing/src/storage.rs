//! Authorisation records: the claim that makes deciding idempotent, and the decision.

use std::time::Duration;

use sterling_storage::{Applied, Condition, Mutation, Row, SharedStore, Value, now_millis};
use sterling_template::{Error, Result};

/// A claim older than this may be taken over (its holder is presumed dead).
pub const CLAIM_LEASE: Duration = Duration::from_secs(5);

/// A decided authorisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The processor's id.
    pub processor_authorisation_id: String,
    /// Approved or declined.
    pub approved: bool,
    /// Stable reason code.
    pub reason: String,
    /// Account charged (empty when the card was unknown).
    pub account_id: String,
    /// Held amount in minor units (0 when declined).
    pub held_amount: i64,
    /// Held currency.
    pub held_currency: String,
    /// Transaction id (UUIDv7).
    pub transaction_id: String,
    /// The event announcing this decision.
    pub event_id: String,
}

/// What [`AuthorisationStore::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// This request decides; here is the transaction id to use.
    Won {
        /// The claim token.
        claim: String,
        /// The transaction id fixed for this authorisation.
        transaction_id: String,
    },
    /// Already decided.
    Decided(Decision),
    /// Another request is deciding right now.
    InProgress,
}

/// Data access of card-processing.
#[derive(Clone)]
pub struct AuthorisationStore {
    store: SharedStore,
}

fn key(id: &str) -> Row {
    Row::new().with("processor_authorisation_id", id)
}

fn decision_from_row(id: &str, row: &Row) -> Result<Decision> {
    Ok(Decision {
        processor_authorisation_id: id.to_string(),
        approved: row.bool("approved")?,
        reason: row.text("reason")?.to_string(),
        account_id: row.text("account_id").unwrap_or_default().to_string(),
        held_amount: row.i64("held_amount").unwrap_or_default(),
        held_currency: row.text("held_currency").unwrap_or_default().to_string(),
        transaction_id: row.text("transaction_id")?.to_string(),
        event_id: row.text("event_id").unwrap_or_default().to_string(),
    })
}

impl AuthorisationStore {
    /// Wraps the service's store.
    pub fn new(store: SharedStore) -> Self {
        AuthorisationStore { store }
    }

    /// Claims the right to decide `id`, or reports the decision or the claim in progress.
    /// A different request under the same id is a `conflict.authorisation`.
    pub async fn claim(
        &self,
        id: &str,
        fingerprint: &str,
        card_token: &str,
        amount: i64,
        currency: &str,
    ) -> Result<Claim> {
        let claim = uuid::Uuid::new_v4().to_string();
        let transaction_id = uuid::Uuid::now_v7().to_string();
        let row = key(id)
            .with("fingerprint", fingerprint)
            .with("state", "processing")
            .with("claim", claim.as_str())
            .with("claimed_at", Value::Timestamp(now_millis()))
            .with("transaction_id", transaction_id.as_str())
            .with("card_token", card_token)
            .with("amount", amount)
            .with("currency", currency);
        let existing = match self
            .store
            .apply(vec![Mutation::insert_if_not_exists("authorisations", row)])
            .await?
        {
            Applied::Yes => {
                return Ok(Claim::Won {
                    claim,
                    transaction_id,
                });
            }
            Applied::No(current) => current
                .into_iter()
                .flatten()
                .next()
                .ok_or_else(|| Error::internal("claim failed without a current row"))?,
        };
        if existing.text("fingerprint")? != fingerprint {
            return Err(Error::conflict(
                "authorisation",
                "authorisation id already used for a different request",
            )
            .with_param("processor_authorisation_id", id));
        }
        if existing.text("state")? == "decided" {
            return Ok(Claim::Decided(decision_from_row(id, &existing)?));
        }
        let stale =
            now_millis() - existing.timestamp("claimed_at")? > CLAIM_LEASE.as_millis() as i64;
        if stale {
            let old = existing.text("claim")?.to_string();
            let take_over = Mutation::update(
                "authorisations",
                key(id),
                Row::new()
                    .with("claim", claim.as_str())
                    .with("claimed_at", Value::Timestamp(now_millis())),
                vec![
                    Condition::Equals("state".into(), "processing".into()),
                    Condition::Equals("claim".into(), old.into()),
                ],
            );
            if self.store.apply(vec![take_over]).await?.applied() {
                return Ok(Claim::Won {
                    claim,
                    transaction_id: existing.text("transaction_id")?.to_string(),
                });
            }
        }
        Ok(Claim::InProgress)
    }

    /// Records the decision if `claim` still holds; returns the decision that stands.
    pub async fn decide(&self, claim: &str, decision: Decision) -> Result<Decision> {
        let set = Row::new()
            .with("state", "decided")
            .with("approved", decision.approved)
            .with("reason", decision.reason.as_str())
            .with("account_id", decision.account_id.as_str())
            .with("held_amount", decision.held_amount)
            .with("held_currency", decision.held_currency.as_str())
            .with("event_id", decision.event_id.as_str())
            .with("decided_at", Value::Timestamp(now_millis()));
        let update = Mutation::update(
            "authorisations",
            key(&decision.processor_authorisation_id),
            set,
            vec![
                Condition::Equals("state".into(), "processing".into()),
                Condition::Equals("claim".into(), claim.into()),
            ],
        );
        if self.store.apply(vec![update]).await?.applied() {
            return Ok(decision);
        }
        // Someone took the claim over and decided; theirs stands.
        self.decision(&decision.processor_authorisation_id)
            .await?
            .ok_or_else(|| {
                Error::unavailable(
                    "authorisation_in_progress",
                    "authorisation is being decided",
                )
            })
    }

    /// The decision for `id`, if decided.
    pub async fn decision(&self, id: &str) -> Result<Option<Decision>> {
        match self.store.get("authorisations", &key(id)).await? {
            Some(row) if row.text("state")? == "decided" => Ok(Some(decision_from_row(id, &row)?)),
            Some(_) => Ok(None),
            None => Err(Error::not_found("authorisation", "no such authorisation")
                .with_param("processor_authorisation_id", id)),
        }
    }
}
