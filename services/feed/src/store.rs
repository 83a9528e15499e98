//! Feed items: written from events, read in pages, followed live.

use prost::Message;
use sterling_bus::Envelope;
use sterling_proto::common::v1::Money;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::{CardAuthorisationDecided, TransactionEnriched};
use sterling_proto::feed::v1::FeedItem;
use sterling_storage::{Mutation, Query, Row, SharedStore, Value};
use sterling_template::{Error, Result};
use tokio::sync::broadcast;

/// The feed's data and its live stream.
#[derive(Clone)]
pub struct FeedStore {
    store: SharedStore,
    live: broadcast::Sender<FeedItem>,
}

fn key(account_id: &str, item_id: &str) -> Row {
    Row::new()
        .with("account_id", account_id)
        .with("item_id", item_id)
}

fn item_from_row(row: &Row) -> Result<FeedItem> {
    let text = |c: &str| row.text(c).unwrap_or_default().to_string();
    let money = |amount: &str, currency: &str| {
        row.i64(amount).ok().map(|minor_units| Money {
            minor_units,
            currency: text(currency),
        })
    };
    let merchant = text("merchant_name");
    let status = row.text("status").unwrap_or("pending").to_string();
    let declined_reason = text("declined_reason");
    Ok(FeedItem {
        item_id: row.text("item_id")?.to_string(),
        account_id: row.text("account_id")?.to_string(),
        title: if merchant.is_empty() {
            text("descriptor")
        } else {
            merchant
        },
        subtitle: if status == "declined" {
            format!("Declined: {}", declined_reason.replace('_', " "))
        } else {
            text("category").replace('_', " ")
        },
        amount: money("amount", "currency"),
        local_amount: money("local_amount", "local_currency"),
        status,
        declined_reason,
        category: text("category"),
        logo_url: text("logo_url"),
        created_at_ms: row.timestamp("created_at").unwrap_or_default(),
        updated_at_ms: row
            .timestamp("enriched_at")
            .unwrap_or_default()
            .max(row.timestamp("created_at").unwrap_or_default()),
    })
}

/// The feed item of a card decision (an approval is pending, a decline final).
fn decision_row(d: &CardAuthorisationDecided, occurred_at_ms: i64) -> Row {
    let amount = d
        .amount
        .clone()
        .or(d.local_amount.clone())
        .unwrap_or_default();
    let local = d.local_amount.clone().unwrap_or_default();
    let decided_at = if d.decided_at_ms > 0 {
        d.decided_at_ms
    } else {
        occurred_at_ms
    };
    key(&d.account_id, &d.transaction_id)
        .with("descriptor", d.merchant_descriptor.as_str())
        .with("amount", amount.minor_units)
        .with("currency", amount.currency.as_str())
        .with("local_amount", local.minor_units)
        .with("local_currency", local.currency.as_str())
        .with("status", if d.approved { "pending" } else { "declined" })
        .with(
            "declined_reason",
            if d.approved { "" } else { d.reason.as_str() },
        )
        .with("created_at", Value::Timestamp(decided_at))
}

/// The merchant columns an enrichment adds to an item.
fn enrichment_row(e: &TransactionEnriched, occurred_at_ms: i64) -> Row {
    let m = e.merchant.clone().unwrap_or_default();
    key(&e.account_id, &e.transaction_id)
        .with("merchant_name", m.name.as_str())
        .with("category", m.category.as_str())
        .with("logo_url", m.logo_url.as_str())
        .with("enriched_at", Value::Timestamp(occurred_at_ms.max(1)))
}

impl FeedStore {
    /// The feed over the service's store.
    pub fn new(store: SharedStore) -> Self {
        FeedStore {
            store,
            live: broadcast::channel(1024).0,
        }
    }

    /// Applies a decision or enrichment event; applying it again changes nothing.
    pub async fn apply_event(&self, envelope: &Envelope) -> Result<()> {
        let bad = |e: prost::DecodeError| Error::bad_request("event", e.to_string());
        let (account_id, item_id, row) = match envelope.r#type.as_str() {
            types::CARD_AUTHORISATION_APPROVED | types::CARD_AUTHORISATION_DECLINED => {
                let d =
                    CardAuthorisationDecided::decode(envelope.payload.as_slice()).map_err(bad)?;
                let row = decision_row(&d, envelope.occurred_at_ms);
                (d.account_id, d.transaction_id, row)
            }
            types::TRANSACTION_ENRICHED => {
                let e = TransactionEnriched::decode(envelope.payload.as_slice()).map_err(bad)?;
                let row = enrichment_row(&e, envelope.occurred_at_ms);
                (e.account_id, e.transaction_id, row)
            }
            other => {
                return Err(Error::bad_request(
                    "event",
                    format!("feed does not take {other}"),
                ));
            }
        };
        if account_id.is_empty() || item_id.is_empty() {
            // A decision for a card nobody holds: no account, no feed.
            return Ok(());
        }
        if envelope.r#type == types::CARD_AUTHORISATION_APPROVED {
            // A decline is final (a reversal comes after its approval, but may be delivered
            // before it): an approval never turns a declined item back to pending.
            let existing = self
                .store
                .get("feed_items", &key(&account_id, &item_id))
                .await?;
            if existing.is_some_and(|r| r.text("status").ok() == Some("declined")) {
                return Ok(());
            }
        }
        self.store
            .apply(vec![Mutation::insert("feed_items", row)])
            .await?;
        if let Some(row) = self
            .store
            .get("feed_items", &key(&account_id, &item_id))
            .await?
        {
            let item = item_from_row(&row)?;
            tracing::info!(item_id = %item.item_id, title = %item.title, status = %item.status, "feed item written");
            let _ = self.live.send(item);
        }
        Ok(())
    }

    /// A page of an account's feed, newest first, after `cursor` (an item id).
    pub async fn page(
        &self,
        account_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Vec<FeedItem>> {
        let query = Query {
            after: cursor.map(|c| Row::new().with("item_id", c)),
            ..Query::partition("feed_items", Row::new().with("account_id", account_id)).limit(limit)
        };
        self.store
            .query(query)
            .await?
            .iter()
            .map(item_from_row)
            .collect()
    }

    /// Every item written from now on.
    pub fn follow(&self) -> broadcast::Receiver<FeedItem> {
        self.live.subscribe()
    }
}
