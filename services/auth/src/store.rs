//! Data access of auth: credentials by email, sessions, and access and refresh tokens by hash.

use std::time::Duration;

use sterling_storage::{Applied, Condition, Mutation, Row, SharedStore, Value, now_millis};
use sterling_template::{Error, Result};

use crate::tokens::{self, ACCESS_PREFIX, REFRESH_PREFIX};

/// A customer's stored credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The customer.
    pub customer_id: String,
    /// Lower-case email.
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
}

/// A session's tokens as given to the customer (the only time they exist in clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSession {
    /// The customer.
    pub customer_id: String,
    /// The session.
    pub session_id: String,
    /// Access token.
    pub access_token: String,
    /// When it expires, ms since the epoch.
    pub access_expires_at_ms: i64,
    /// Refresh token.
    pub refresh_token: String,
    /// When it expires, ms since the epoch.
    pub refresh_expires_at_ms: i64,
}

/// Who an access token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The customer.
    pub customer_id: String,
    /// The session.
    pub session_id: String,
    /// When the token expires, ms since the epoch.
    pub expires_at_ms: i64,
}

/// How long tokens live.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Access tokens.
    pub access: Duration,
    /// Refresh tokens.
    pub refresh: Duration,
}

/// Data access of auth.
#[derive(Clone)]
pub struct AuthStore {
    store: SharedStore,
    lifetimes: Lifetimes,
}

fn invalid_token() -> Error {
    Error::unauthorized(
        "token",
        "the token is unknown, expired or its session has ended",
    )
}

fn first_row(current: Vec<Option<Row>>) -> Result<Row> {
    current
        .into_iter()
        .flatten()
        .next()
        .ok_or_else(|| Error::internal("a conditional write failed without a current row"))
}

impl AuthStore {
    /// Over the service's store, tokens living `lifetimes`.
    pub fn new(store: SharedStore, lifetimes: Lifetimes) -> Self {
        AuthStore { store, lifetimes }
    }

    /// Stores credentials for `email` unless it has some; a repeat of the same sign-up (same
    /// key) answers what was stored, another is `conflict.email`.
    pub async fn sign_up(&self, key: &str, email: &str, password_hash: &str) -> Result<Credential> {
        let customer_id = format!("cus_{}", uuid::Uuid::now_v7().simple());
        let row = Row::new()
            .with("email", email)
            .with("customer_id", customer_id.as_str())
            .with("password_hash", password_hash)
            .with("signup_key", key)
            .with("created_at", Value::Timestamp(now_millis()));
        match self
            .store
            .apply(vec![Mutation::insert_if_not_exists("credentials", row)])
            .await?
        {
            Applied::Yes => Ok(Credential {
                customer_id,
                email: email.to_string(),
                password_hash: password_hash.to_string(),
            }),
            Applied::No(current) => {
                let existing = first_row(current)?;
                if existing.text("signup_key")? != key {
                    return Err(Error::conflict(
                        "email",
                        "that email already has an account",
                    ));
                }
                credential_from_row(&existing)
            }
        }
    }

    /// The credentials of `email`, if any.
    pub async fn credential(&self, email: &str) -> Result<Option<Credential>> {
        let row = self
            .store
            .get("credentials", &Row::new().with("email", email))
            .await?;
        row.as_ref().map(credential_from_row).transpose()
    }

    /// Opens a session for `customer_id` and gives its first tokens.
    pub async fn open_session(&self, customer_id: &str) -> Result<IssuedSession> {
        let session_id = format!("ses_{}", uuid::Uuid::now_v7().simple());
        let row = Row::new()
            .with("session_id", session_id.as_str())
            .with("customer_id", customer_id)
            .with("revoked", false)
            .with("created_at", Value::Timestamp(now_millis()));
        self.store
            .apply(vec![Mutation::insert_if_not_exists("sessions", row)])
            .await?;
        self.issue(customer_id, &session_id).await
    }

    /// New tokens for a refresh token, which is spent. A spent one presented again ends its
    /// session: whoever holds the newer tokens loses them too.
    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedSession> {
        let (key, row) = self
            .token_row("refresh_tokens", REFRESH_PREFIX, refresh_token)
            .await?;
        let (session_id, customer_id) = (row.text("session_id")?, row.text("customer_id")?);
        if row.timestamp("expires_at")? <= now_millis() || self.revoked(session_id).await? {
            return Err(invalid_token());
        }
        let spend = Mutation::update(
            "refresh_tokens",
            key,
            Row::new().with("spent", true),
            vec![Condition::Equals("spent".into(), Value::from(false))],
        );
        if !self.store.apply(vec![spend]).await?.applied() {
            tracing::warn!(
                session_id,
                "a spent refresh token was presented again; ending the session"
            );
            self.revoke(session_id).await?;
            return Err(invalid_token());
        }
        self.issue(customer_id, session_id).await
    }

    /// Who `access_token` belongs to, or `unauthorized.token`.
    pub async fn introspect(&self, access_token: &str) -> Result<Principal> {
        let (_, row) = self
            .token_row("access_tokens", ACCESS_PREFIX, access_token)
            .await?;
        let expires_at_ms = row.timestamp("expires_at")?;
        let session_id = row.text("session_id")?;
        if expires_at_ms <= now_millis() || self.revoked(session_id).await? {
            return Err(invalid_token());
        }
        Ok(Principal {
            customer_id: row.text("customer_id")?.to_string(),
            session_id: session_id.to_string(),
            expires_at_ms,
        })
    }

    /// Ends the session `access_token` belongs to (again, if it has ended); its id.
    pub async fn sign_out(&self, access_token: &str) -> Result<String> {
        let (_, row) = self
            .token_row("access_tokens", ACCESS_PREFIX, access_token)
            .await?;
        let session_id = row.text("session_id")?.to_string();
        self.revoke(&session_id).await?;
        Ok(session_id)
    }

    /// The stored row of a token with `prefix` in `table`, and its key; `unauthorized.token`
    /// if there is none.
    async fn token_row(&self, table: &str, prefix: &str, token: &str) -> Result<(Row, Row)> {
        if !token.starts_with(prefix) {
            return Err(invalid_token());
        }
        let key = Row::new().with("token_hash", tokens::hash(token));
        let row = self
            .store
            .get(table, &key)
            .await?
            .ok_or_else(invalid_token)?;
        Ok((key, row))
    }

    async fn revoked(&self, session_id: &str) -> Result<bool> {
        let row = self
            .store
            .get("sessions", &Row::new().with("session_id", session_id))
            .await?;
        Ok(row.is_none_or(|r| r.bool("revoked").unwrap_or(true)))
    }

    async fn revoke(&self, session_id: &str) -> Result<()> {
        self.store
            .apply(vec![Mutation::update(
                "sessions",
                Row::new().with("session_id", session_id),
                Row::new().with("revoked", true),
                vec![Condition::Exists],
            )])
            .await?;
        Ok(())
    }

    /// A new access token and refresh token in `session_id`.
    async fn issue(&self, customer_id: &str, session_id: &str) -> Result<IssuedSession> {
        let now = now_millis();
        let access_token = tokens::new_token(ACCESS_PREFIX);
        let refresh_token = tokens::new_token(REFRESH_PREFIX);
        let access_expires_at_ms = now + self.lifetimes.access.as_millis() as i64;
        let refresh_expires_at_ms = now + self.lifetimes.refresh.as_millis() as i64;
        let token_row = |token: &str, expires: i64| {
            Row::new()
                .with("token_hash", tokens::hash(token))
                .with("session_id", session_id)
                .with("customer_id", customer_id)
                .with("expires_at", Value::Timestamp(expires))
        };
        self.store
            .apply(vec![
                Mutation::insert(
                    "access_tokens",
                    token_row(&access_token, access_expires_at_ms),
                )
                .with_ttl(self.lifetimes.access),
            ])
            .await?;
        self.store
            .apply(vec![
                Mutation::insert(
                    "refresh_tokens",
                    token_row(&refresh_token, refresh_expires_at_ms).with("spent", false),
                )
                .with_ttl(self.lifetimes.refresh),
            ])
            .await?;
        Ok(IssuedSession {
            customer_id: customer_id.to_string(),
            session_id: session_id.to_string(),
            access_token,
            access_expires_at_ms,
            refresh_token,
            refresh_expires_at_ms,
        })
    }
}

fn credential_from_row(row: &Row) -> Result<Credential> {
    Ok(Credential {
        customer_id: row.text("customer_id")?.to_string(),
        email: row.text("email")?.to_string(),
        password_hash: row.text("password_hash")?.to_string(),
    })
}
