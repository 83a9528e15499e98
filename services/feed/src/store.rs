//! Feed items: written from events, read in pages, followed live.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prost::Message;
use sterling_bus::Envelope;
use sterling_proto::common::v1::Money;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::{
    CardAuthorisationDecided, CardPaymentUpdated, TransactionEnriched,
};
use sterling_proto::feed::v1::FeedItem;
use sterling_storage::{Condition, Mutation, Row, SharedStore, Value};
use sterling_template::by_month::ByMonth;
use sterling_template::{Error, Result};
use tokio::sync::broadcast;

/// The feed's data and its live streams.
#[derive(Clone)]
pub struct FeedStore {
    store: SharedStore,
    live: Followers,
}

/// Items a follower of one account may fall behind by before its stream ends (a channel
/// holds this many slots from the start: 256 took about 80 KB per account followed).
const FOLLOW_BUFFER: usize = 32;

/// Accounts kept without a follower, above which those are forgotten.
const ACCOUNTS_REMEMBERED: usize = 1024;

/// The live streams: a channel per account followed, so an item wakes only the followers of
/// its own account (one channel for every account woke every follower for every item, and a
/// busy account could push a quiet one's follower past its buffer).
#[derive(Clone, Default)]
struct Followers(Arc<Mutex<HashMap<String, broadcast::Sender<FeedItem>>>>);

impl Followers {
    /// A new follower of `account_id`'s items.
    fn follow(&self, account_id: &str) -> broadcast::Receiver<FeedItem> {
        let mut channels = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if channels.len() > ACCOUNTS_REMEMBERED {
            channels.retain(|_, channel| channel.receiver_count() > 0);
        }
        channels
            .entry(account_id.to_string())
            .or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0)
            .subscribe()
    }

    /// Sends `item` to its account's followers, if any.
    fn send(&self, item: FeedItem) {
        let mut channels = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(&item.account_id) {
            let account_id = item.account_id.clone();
            if channel.send(item).is_err() {
                // Its last follower has gone.
                channels.remove(&account_id);
            }
        }
    }
}

/// Feed items by account and month.
pub const ITEMS: ByMonth = ByMonth {
    table: "account_feed",
    months: "account_feed_months",
    owner: "account_id",
    id: "item_id",
};

fn key(account_id: &str, item_id: &str) -> Row {
    ITEMS.key(account_id, item_id)
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
    let kind = match text("kind") {
        kind if kind.is_empty() => "card_payment".to_string(),
        kind => kind,
    };
    let status = match row.text("payment_status") {
        Ok("refunded") => "settled".to_string(),
        Ok(payment) if !payment.is_empty() => payment.to_string(),
        _ => row.text("status").unwrap_or("pending").to_string(),
    };
    let declined_reason = text("declined_reason");
    let subtitle = match (kind.as_str(), status.as_str()) {
        ("refund", _) => "Refund".to_string(),
        ("force_post", _) => "Offline payment".to_string(),
        (_, "declined") => format!("Declined: {}", declined_reason.replace('_', " ")),
        (_, "reversed") => "Reversed".to_string(),
        (_, "expired") => "Expired: the merchant never took it".to_string(),
        _ => text("category").replace('_', " "),
    };
    let amount = match (row.i64("payment_amount"), status.as_str()) {
        (Ok(minor_units), "pending" | "settled") => Some(Money {
            minor_units,
            currency: text("currency"),
        }),
        _ => money("amount", "currency"),
    };
    Ok(FeedItem {
        item_id: row.text("item_id")?.to_string(),
        account_id: row.text("account_id")?.to_string(),
        title: if merchant.is_empty() {
            text("descriptor")
        } else {
            merchant
        },
        subtitle,
        amount,
        local_amount: money("local_amount", "local_currency"),
        status,
        declined_reason,
        category: text("category"),
        logo_url: text("logo_url"),
        created_at_ms: row.timestamp("created_at").unwrap_or_default(),
        updated_at_ms: row
            .timestamp("enriched_at")
            .unwrap_or_default()
            .max(row.timestamp("created_at").unwrap_or_default())
            .max(row.timestamp("updated_at").unwrap_or_default()),
        kind,
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
            live: Followers::default(),
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
            t if t.starts_with("card.payment.") => {
                let e = CardPaymentUpdated::decode(envelope.payload.as_slice()).map_err(bad)?;
                if !self.take_payment(&e).await? {
                    return Ok(());
                }
                (e.account_id, e.transaction_id, Row::new())
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
                .get(ITEMS.table, &key(&account_id, &item_id))
                .await?;
            if existing.is_some_and(|r| r.text("status").ok() == Some("declined")) {
                return Ok(());
            }
        }
        if !row.0.is_empty() {
            // The month's entry first, then the item (one commit on the embedded store).
            self.store
                .apply_in_order(vec![
                    vec![ITEMS.month_entry(&account_id, &item_id)],
                    vec![Mutation::insert(ITEMS.table, row)],
                ])
                .await?;
        }
        if let Some(row) = self
            .store
            .get(ITEMS.table, &key(&account_id, &item_id))
            .await?
        {
            let item = item_from_row(&row)?;
            tracing::info!(item_id = %item.item_id, title = %item.title, status = %item.status, "feed item written");
            self.live.send(item);
        }
        Ok(())
    }

    /// Writes a payment update's columns unless a newer version is there; `false` if there is
    /// nothing to write. A refund or force post is an item of its own.
    async fn take_payment(&self, e: &CardPaymentUpdated) -> Result<bool> {
        if e.account_id.is_empty() || e.transaction_id.is_empty() {
            return Ok(false);
        }
        let minor = |m: &Option<Money>| m.as_ref().map_or(0, |m| m.minor_units);
        let key = key(&e.account_id, &e.transaction_id);
        let own = matches!(e.kind.as_str(), "refund" | "force_post");
        let amount = if own {
            minor(&e.amount)
        } else if e.status == "pending" {
            minor(&e.held) + minor(&e.settled)
        } else {
            minor(&e.settled)
        };
        let mut columns = Row::new()
            .with(
                "payment_status",
                if own { "settled" } else { e.status.as_str() },
            )
            .with("payment_amount", amount)
            .with("payment_version", e.payment_version)
            .with("updated_at", Value::Timestamp(e.occurred_at_ms.max(1)));
        if own {
            let amount = e.amount.clone().unwrap_or_default();
            let local = e.local_amount.clone().unwrap_or_else(|| amount.clone());
            columns = columns
                .with("kind", e.kind.as_str())
                .with("descriptor", e.merchant_descriptor.as_str())
                .with("amount", amount.minor_units)
                .with("currency", amount.currency.as_str())
                .with("local_amount", local.minor_units)
                .with("local_currency", local.currency.as_str())
                .with("status", "settled")
                .with("created_at", Value::Timestamp(e.occurred_at_ms.max(1)));
        }
        self.store
            .apply(vec![ITEMS.month_entry(&e.account_id, &e.transaction_id)])
            .await?;
        for _ in 0..100 {
            let existing = self.store.get(ITEMS.table, &key).await?;
            let mutation = match &existing {
                None => {
                    let mut row = key.clone();
                    row.0.extend(columns.0.clone());
                    Mutation::insert_if_not_exists(ITEMS.table, row)
                }
                Some(row) => {
                    let seen = row.i64("payment_version").ok();
                    if seen.unwrap_or(0) >= e.payment_version {
                        return Ok(false);
                    }
                    let condition = match seen {
                        Some(v) => Condition::Equals("payment_version".into(), Value::BigInt(v)),
                        None => Condition::Exists,
                    };
                    Mutation::update(ITEMS.table, key.clone(), columns.clone(), vec![condition])
                }
            };
            if self.store.apply(vec![mutation]).await?.applied() {
                return Ok(true);
            }
        }
        Err(Error::unavailable(
            "contention",
            "too much contention on a feed item",
        ))
    }

    /// A page of an account's feed, newest first, after `cursor` (an item id).
    pub async fn page(
        &self,
        account_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Vec<FeedItem>> {
        ITEMS
            .page(&self.store, account_id, cursor, limit)
            .await?
            .iter()
            .map(item_from_row)
            .collect()
    }

    /// Moves the items of `feed_items` (a partition per account forever) to the monthly
    /// partitions, once; returns how many this call moved.
    pub async fn move_first_table(&self) -> Result<u64> {
        ITEMS.move_once(&self.store, "feed_items").await
    }

    /// The items of `account_id` written from now on.
    pub fn follow(&self, account_id: &str) -> broadcast::Receiver<FeedItem> {
        self.live.follow(account_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(account_id: &str, item_id: &str) -> FeedItem {
        FeedItem {
            account_id: account_id.to_string(),
            item_id: item_id.to_string(),
            ..FeedItem::default()
        }
    }

    #[test]
    fn an_item_reaches_the_followers_of_its_account_only() {
        let followers = Followers::default();
        let (mut a1, mut a2, mut b) = (
            followers.follow("a"),
            followers.follow("a"),
            followers.follow("b"),
        );
        followers.send(item("a", "1"));
        followers.send(item("c", "2"));
        assert_eq!(a1.try_recv().unwrap().item_id, "1");
        assert_eq!(a2.try_recv().unwrap().item_id, "1");
        assert!(a1.try_recv().is_err() && b.try_recv().is_err());
    }

    #[test]
    fn an_account_whose_followers_left_is_forgotten_at_its_next_item() {
        let followers = Followers::default();
        drop(followers.follow("a"));
        assert_eq!(followers.0.lock().unwrap().len(), 1);
        followers.send(item("a", "1"));
        assert!(followers.0.lock().unwrap().is_empty());
        let mut again = followers.follow("a");
        followers.send(item("a", "2"));
        assert_eq!(again.try_recv().unwrap().item_id, "2");
    }
}
