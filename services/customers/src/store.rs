//! Profiles: one row per customer, replaced whole by each write.

use sterling_storage::{Condition, Mutation, Row, SharedStore, Value, now_millis};
use sterling_template::{Error, Result};

/// How many compare-and-set rounds a write may take.
const MAX_ROUNDS: usize = 20;

/// A customer's profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The customer, as auth named them.
    pub customer_id: String,
    /// Their name as on their documents.
    pub legal_name: String,
    /// What they like to be called (may be empty).
    pub preferred_name: String,
    /// `YYYY-MM-DD`.
    pub date_of_birth: String,
    /// Writes so far.
    pub version: i64,
    /// When it was last written.
    pub updated_at_ms: i64,
}

/// The profiles' store.
pub struct ProfileStore {
    store: SharedStore,
}

fn key(customer_id: &str) -> Row {
    Row::new().with("customer_id", customer_id)
}

impl ProfileStore {
    /// Wraps the service's store.
    pub fn new(store: SharedStore) -> Self {
        ProfileStore { store }
    }

    /// The customer's profile, if they wrote one.
    pub async fn get(&self, customer_id: &str) -> Result<Option<Profile>> {
        let Some(row) = self.store.get("profiles", &key(customer_id)).await? else {
            return Ok(None);
        };
        Ok(Some(Profile {
            customer_id: customer_id.to_string(),
            legal_name: row.text("legal_name")?.to_string(),
            preferred_name: row.text("preferred_name")?.to_string(),
            date_of_birth: row.text("date_of_birth")?.to_string(),
            version: row.i64("version")?,
            updated_at_ms: row.timestamp("updated_at")?,
        }))
    }

    /// Writes the profile whole; the stored version is one more than the one it replaced
    /// (a compare-and-set, so two writes at once make two versions).
    pub async fn put(
        &self,
        customer_id: &str,
        legal_name: &str,
        preferred_name: &str,
        date_of_birth: &str,
    ) -> Result<Profile> {
        for _ in 0..MAX_ROUNDS {
            let before = self.get(customer_id).await?.map(|p| p.version);
            let version = before.unwrap_or(0) + 1;
            let now = now_millis();
            let fields = |row: Row| {
                row.with("legal_name", legal_name)
                    .with("preferred_name", preferred_name)
                    .with("date_of_birth", date_of_birth)
                    .with("version", version)
                    .with("updated_at", Value::Timestamp(now))
            };
            let write = match before {
                None => Mutation::insert_if_not_exists("profiles", fields(key(customer_id))),
                Some(v) => Mutation::update(
                    "profiles",
                    key(customer_id),
                    fields(Row::new()),
                    vec![Condition::Equals("version".into(), Value::BigInt(v))],
                ),
            };
            if self.store.apply(vec![write]).await?.applied() {
                return Ok(Profile {
                    customer_id: customer_id.to_string(),
                    legal_name: legal_name.to_string(),
                    preferred_name: preferred_name.to_string(),
                    date_of_birth: date_of_birth.to_string(),
                    version,
                    updated_at_ms: now,
                });
            }
        }
        Err(Error::unavailable(
            "contention",
            "too many writes to this profile at once; retry",
        ))
    }
}
