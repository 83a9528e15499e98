//! Card records in the cards keyspace.

use rand::Rng;
use sterling_storage::{Applied, Condition, Mutation, Row, SharedStore, now_millis};
use sterling_template::{Error, Result};

/// A card's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardStatus {
    /// Can be used.
    Active,
    /// Declined until unfrozen.
    Frozen,
}

impl CardStatus {
    fn as_str(self) -> &'static str {
        match self {
            CardStatus::Active => "active",
            CardStatus::Frozen => "frozen",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "active" => Ok(CardStatus::Active),
            "frozen" => Ok(CardStatus::Frozen),
            other => Err(Error::internal(format!("stored card status {other:?}"))),
        }
    }
}

/// A stored card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// Opaque token the processor sends.
    pub token: String,
    /// Ledger account the card spends from.
    pub account_id: String,
    /// That account's currency.
    pub currency: String,
    /// Active or frozen.
    pub status: CardStatus,
    /// Last four digits of the PAN.
    pub last_four: String,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
}

impl Card {
    fn from_row(row: &Row) -> Result<Card> {
        Ok(Card {
            token: row.text("card_token")?.to_string(),
            account_id: row.text("account_id")?.to_string(),
            currency: row.text("currency")?.to_string(),
            status: CardStatus::parse(row.text("status")?)?,
            last_four: row.text("last_four")?.to_string(),
            created_at_ms: row.timestamp("created_at")?,
        })
    }
}

/// Data access of the cards service.
#[derive(Clone)]
pub struct CardStore {
    store: SharedStore,
}

fn token_key(token: &str) -> Row {
    Row::new().with("card_token", token)
}

impl CardStore {
    /// Wraps the service's store.
    pub fn new(store: SharedStore) -> Self {
        CardStore { store }
    }

    /// Issues a card, once per idempotency key.
    pub async fn issue(
        &self,
        idempotency_key: &str,
        account_id: &str,
        currency: &str,
    ) -> Result<Card> {
        let (token, last_four) = {
            let mut rng = rand::rng();
            let token = format!("card_{:024x}", rng.random::<u128>() >> 32);
            let last_four = format!("{:04}", rng.random_range(0..10_000));
            (token, last_four)
        };
        let claim = Row::new()
            .with("idempotency_key", idempotency_key)
            .with("card_token", token.as_str())
            .with("account_id", account_id)
            .with("currency", currency);
        let token = match self
            .store
            .apply(vec![Mutation::insert_if_not_exists("card_issues", claim)])
            .await?
        {
            Applied::Yes => token,
            Applied::No(current) => {
                let existing = current.into_iter().flatten().next().ok_or_else(|| {
                    Error::internal("card issue claim failed without a current row")
                })?;
                if existing.text("account_id")? != account_id
                    || existing.text("currency")? != currency
                {
                    return Err(Error::conflict(
                        "idempotency_key",
                        "idempotency key already used for another card request",
                    )
                    .with_param("idempotency_key", idempotency_key));
                }
                existing.text("card_token")?.to_string()
            }
        };
        // Both writes are idempotent: a retry after a crash here completes the card.
        let card = Row::new()
            .with("card_token", token.as_str())
            .with("account_id", account_id)
            .with("currency", currency)
            .with("status", CardStatus::Active.as_str())
            .with("last_four", last_four)
            .with(
                "created_at",
                sterling_storage::Value::Timestamp(now_millis()),
            );
        self.store
            .apply(vec![Mutation::insert_if_not_exists("cards", card)])
            .await?;
        self.store
            .apply(vec![Mutation::insert(
                "cards_by_account",
                Row::new()
                    .with("account_id", account_id)
                    .with("card_token", token.as_str()),
            )])
            .await?;
        self.get(&token).await
    }

    /// The card with this token.
    pub async fn get(&self, token: &str) -> Result<Card> {
        let row = self
            .store
            .get("cards", &token_key(token))
            .await?
            .ok_or_else(|| {
                Error::not_found("card", "no such card").with_param("card_token", token)
            })?;
        Card::from_row(&row)
    }

    /// Moves a card to `status` by compare-and-set; setting the current status is a no-op.
    pub async fn set_status(&self, token: &str, status: CardStatus) -> Result<Card> {
        loop {
            let card = self.get(token).await?;
            if card.status == status {
                return Ok(card);
            }
            let applied = self
                .store
                .apply(vec![Mutation::update(
                    "cards",
                    token_key(token),
                    Row::new().with("status", status.as_str()),
                    vec![Condition::Equals(
                        "status".into(),
                        card.status.as_str().into(),
                    )],
                )])
                .await?;
            if applied.applied() {
                return self.get(token).await;
            }
        }
    }
}
