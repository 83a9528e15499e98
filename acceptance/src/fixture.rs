//! The acceptance customer and what it pays with, made idempotently through the public API
//! under a recognisable prefix: the same run, or the next, finds the same customer, account
//! and card instead of making new ones.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::Config;
use crate::api::PublicApi;
use crate::receiver::Receiver;

/// Below this much available (minor units), the account is topped up before a run.
pub const FLOOR: i64 = 5_000; // GBP 50.00

/// What the account is topped up to.
pub const TOP_UP_TO: i64 = 20_000; // GBP 200.00

/// The acceptance customer's things.
pub struct Fixture {
    /// The public API, signed in as the customer.
    pub api: PublicApi,
    /// Its GBP account.
    pub account_id: String,
    /// Its card.
    pub card_token: String,
    /// Its phone's device token (pushes for it go to the push sink).
    pub device_token: String,
    /// Its webhook, delivering to this run's receiver.
    pub webhook_id: String,
}

impl Fixture {
    /// Finds or makes the customer, account, card, phone and webhook (delivering to
    /// `receiver_url`; webhooks of earlier runs to other URLs are deleted), and tops the
    /// account up if it runs low.
    pub async fn prepare(
        config: &Config,
        http: reqwest::Client,
        receiver: &Receiver,
        receiver_url: &str,
    ) -> anyhow::Result<Fixture> {
        let prefix = &config.prefix;
        let email = format!("{prefix}@example.com");
        let api = PublicApi::sign_in(http, &config.gateway, &email, &config.password).await?;
        let account = api
            .call(
                Method::POST,
                "/v1/accounts",
                Some(&format!("{prefix}-account-gbp")),
                Some(json!({"currency": "GBP"})),
            )
            .await?
            .expect(StatusCode::CREATED, "open the account")?;
        let account_id = text(&account, "account_id")?;
        let on_account = |rest: &str| format!("/v1/accounts/{account_id}{rest}");
        let card = api
            .call(
                Method::POST,
                &on_account("/cards"),
                Some(&format!("{prefix}-card")),
                None,
            )
            .await?
            .expect(StatusCode::CREATED, "issue the card")?;
        let card_token = text(&card, "card_token")?;
        // A run that died while its card was frozen left it so.
        api.call(
            Method::POST,
            &on_account(&format!("/cards/{card_token}/unfreeze")),
            None,
            None,
        )
        .await?
        .expect(StatusCode::OK, "unfreeze the card")?;
        let device_token = format!("{prefix}-phone-{account_id}");
        api.call(
            Method::POST,
            &on_account("/devices"),
            None,
            Some(json!({"device_token": device_token, "platform": "ios"})),
        )
        .await?
        .expect(StatusCode::CREATED, "register the phone")?;
        let webhook_id = webhook(
            &api,
            &on_account("/webhooks"),
            prefix,
            receiver,
            receiver_url,
        )
        .await?;
        let fixture = Fixture {
            api,
            account_id,
            card_token,
            device_token,
            webhook_id,
        };
        fixture.top_up(prefix, config.async_timeout).await?;
        Ok(fixture)
    }

    /// Tops the account up to [`TOP_UP_TO`] if it has less than [`FLOOR`] available, and
    /// waits up to `limit` for the balance read model to show it.
    pub async fn top_up(&self, prefix: &str, limit: Duration) -> anyhow::Result<()> {
        let now = self.api.account(&self.account_id).await?;
        if now.available >= FLOOR {
            return Ok(());
        }
        let answer = self
            .api
            .call(
                Method::POST,
                &format!("/v1/accounts/{}/top-ups", self.account_id),
                Some(&format!("{prefix}-top-up-{}", uuid::Uuid::now_v7())),
                Some(json!({"minor_units": TOP_UP_TO - now.available})),
            )
            .await?;
        if answer.status == StatusCode::FORBIDDEN {
            return Err(anyhow!(
                "account {} has {} available and top-ups are off on this deployment: fund it \
                 with the operator's credential (a ledger transfer from the funding account)",
                self.account_id,
                now.available
            ));
        }
        answer.expect(StatusCode::CREATED, "top up")?;
        let deadline = Instant::now() + limit;
        loop {
            let now = self.api.account(&self.account_id).await?;
            if now.available >= FLOOR {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(anyhow!("the top-up did not show within {limit:?}: {now:?}"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The account's webhook to `receiver_url` (registered once per URL), its secret handed to the
/// receiver; webhooks to other URLs (earlier runs' receivers) are deleted.
async fn webhook(
    api: &PublicApi,
    path: &str,
    prefix: &str,
    receiver: &Receiver,
    receiver_url: &str,
) -> anyhow::Result<String> {
    let listed = api
        .call(Method::GET, path, None, None)
        .await?
        .expect(StatusCode::OK, "list webhooks")?;
    for old in listed["webhooks"].as_array().into_iter().flatten() {
        if old["url"] != receiver_url {
            let id = text(old, "webhook_id")?;
            api.call(Method::DELETE, &format!("{path}/{id}"), None, None)
                .await?
                .expect(StatusCode::NO_CONTENT, "delete an old webhook")?;
        }
    }
    let key = format!("{prefix}-webhook-{receiver_url}");
    let registered = api
        .call(
            Method::POST,
            path,
            Some(&key),
            Some(json!({"url": receiver_url})),
        )
        .await?
        .expect(StatusCode::CREATED, "register the webhook")?;
    receiver.verify_with(&text(&registered, "secret")?);
    text(&registered, "webhook_id")
}

fn text(value: &serde_json::Value, field: &str) -> anyhow::Result<String> {
    value[field]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no {field} in {value}"))
}
