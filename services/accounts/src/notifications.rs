//! How an account tells its customer what happens, in the public API: phones registered for
//! push, and webhooks (register, list, delete, and each one's delivery log). Each handler
//! first checks the account is the authenticated customer's; a webhook is reached only
//! through its account, and its signing secret is shown once, when it is registered.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sterling_proto::push::v1::{
    Device, ListDevicesRequest, RegisterDeviceRequest, UnregisterDeviceRequest,
};
use sterling_proto::webhooks::v1::{
    DeleteWebhookRequest, Delivery, ListDeliveriesRequest, ListWebhooksRequest,
    RegisterWebhookRequest, Webhook,
};
use sterling_template::Error;
use sterling_template::server::Problem;

use crate::activity::MAX_PAGE;
use crate::handlers::{AccountsState, Caller, customer, idempotency_key, key_digest, parse};
use crate::store::OwnedAccount;

type Shared = State<Arc<AccountsState>>;

fn device_json(d: Device) -> Value {
    json!({
        "device_token": d.device_token,
        "platform": d.platform,
        "registered_at_ms": d.registered_at_ms,
    })
}

fn webhook_json(w: Webhook) -> Value {
    let mut json = json!({
        "webhook_id": w.webhook_id,
        "url": w.url,
        "created_at_ms": w.created_at_ms,
    });
    if !w.secret.is_empty() {
        json["secret"] = json!(w.secret);
    }
    json
}

fn delivery_json(d: Delivery) -> Value {
    json!({
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "last_status_code": d.last_status_code,
        "last_latency_ms": d.last_latency_ms,
        "last_error": d.last_error,
        "next_attempt_at_ms": d.next_attempt_at_ms,
        "delivered_at_ms": d.delivered_at_ms,
    })
}

async fn owned(state: &AccountsState, caller: &Caller, id: &str) -> Result<OwnedAccount, Problem> {
    Ok(state.accounts.owned(customer(caller)?, id).await?)
}

/// What registering a phone takes.
#[derive(Deserialize)]
struct NewDevice {
    device_token: String,
    platform: String,
}

/// `POST /v1/accounts/{id}/devices`: 201 and the device; registering it again changes nothing.
pub async fn register_device(
    State(state): Shared,
    caller: Caller,
    Path(account_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let account = owned(&state, &caller, &account_id).await?;
    let device: NewDevice = parse(&body)?;
    let registered = state
        .push
        .clone()
        .register_device(RegisterDeviceRequest {
            account_id: account.account_id,
            device_token: device.device_token,
            platform: device.platform,
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    Ok((StatusCode::CREATED, Json(device_json(registered))))
}

/// `GET /v1/accounts/{id}/devices`.
pub async fn list_devices(
    State(state): Shared,
    caller: Caller,
    Path(account_id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let account = owned(&state, &caller, &account_id).await?;
    let devices = state
        .push
        .clone()
        .list_devices(ListDevicesRequest {
            account_id: account.account_id,
        })
        .await
        .map_err(Error::from)?
        .into_inner()
        .devices;
    let devices: Vec<Value> = devices.into_iter().map(device_json).collect();
    Ok(Json(json!({ "devices": devices })))
}

/// `DELETE /v1/accounts/{id}/devices/{device_token}`: 204; pushes stop. Idempotent.
pub async fn unregister_device(
    State(state): Shared,
    caller: Caller,
    Path((account_id, device_token)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let account = owned(&state, &caller, &account_id).await?;
    state
        .push
        .clone()
        .unregister_device(UnregisterDeviceRequest {
            account_id: account.account_id,
            device_token,
        })
        .await
        .map_err(Error::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// What registering a webhook takes.
#[derive(Deserialize)]
struct NewWebhook {
    url: String,
}

/// `POST /v1/accounts/{id}/webhooks` with an `Idempotency-Key`: 201 and the webhook with its
/// signing secret (a repeat answers the same webhook and secret, so a retry after a lost
/// answer still learns it).
pub async fn register_webhook(
    State(state): Shared,
    caller: Caller,
    Path(account_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let customer_id = customer(&caller)?;
    let key = idempotency_key(&headers)?;
    let account = state.accounts.owned(customer_id, &account_id).await?;
    let webhook: NewWebhook = parse(&body)?;
    let registered = state
        .webhooks
        .clone()
        .register_webhook(RegisterWebhookRequest {
            // Scoped by customer and hashed, like top-ups and cards.
            idempotency_key: format!(
                "webhook:{}",
                &key_digest(&format!("{customer_id}:{key}"))[..40]
            ),
            account_id: account.account_id,
            url: webhook.url,
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    Ok((StatusCode::CREATED, Json(webhook_json(registered))))
}

/// `GET /v1/accounts/{id}/webhooks`: without secrets.
pub async fn list_webhooks(
    State(state): Shared,
    caller: Caller,
    Path(account_id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let account = owned(&state, &caller, &account_id).await?;
    let webhooks = account_webhooks(&state, account).await?;
    let webhooks: Vec<Value> = webhooks.into_iter().map(webhook_json).collect();
    Ok(Json(json!({ "webhooks": webhooks })))
}

async fn account_webhooks(
    state: &AccountsState,
    account: OwnedAccount,
) -> Result<Vec<Webhook>, Problem> {
    Ok(state
        .webhooks
        .clone()
        .list_webhooks(ListWebhooksRequest {
            account_id: account.account_id,
        })
        .await
        .map_err(Error::from)?
        .into_inner()
        .webhooks)
}

/// The account's webhook `webhook_id`, or 404 `not_found.webhook`.
async fn owned_webhook(
    state: &AccountsState,
    account: OwnedAccount,
    webhook_id: &str,
) -> Result<Webhook, Problem> {
    account_webhooks(state, account)
        .await?
        .into_iter()
        .find(|w| w.webhook_id == webhook_id)
        .ok_or_else(|| {
            Problem(Error::not_found(
                "webhook",
                "no such webhook on this account",
            ))
        })
}

/// `DELETE /v1/accounts/{id}/webhooks/{webhook_id}`: 204; deliveries stop.
pub async fn delete_webhook(
    State(state): Shared,
    caller: Caller,
    Path((account_id, webhook_id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let account = owned(&state, &caller, &account_id).await?;
    let webhook = owned_webhook(&state, account.clone(), &webhook_id).await?;
    state
        .webhooks
        .clone()
        .delete_webhook(DeleteWebhookRequest {
            account_id: account.account_id,
            webhook_id: webhook.webhook_id,
        })
        .await
        .map_err(Error::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// How many deliveries to list.
#[derive(Deserialize)]
pub struct Limit {
    limit: Option<u32>,
}

/// `GET /v1/accounts/{id}/webhooks/{webhook_id}/deliveries?limit=`: the newest deliveries,
/// each with its attempts and last outcome.
pub async fn deliveries(
    State(state): Shared,
    caller: Caller,
    Path((account_id, webhook_id)): Path<(String, String)>,
    Query(limit): Query<Limit>,
) -> Result<Json<Value>, Problem> {
    let limit = limit.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        let why = format!("limit is from 1 to {MAX_PAGE}");
        return Err(Error::bad_request("limit", why).into());
    }
    let account = owned(&state, &caller, &account_id).await?;
    let webhook = owned_webhook(&state, account, &webhook_id).await?;
    let deliveries = state
        .webhooks
        .clone()
        .list_deliveries(ListDeliveriesRequest {
            webhook_id: webhook.webhook_id,
            limit,
        })
        .await
        .map_err(Error::from)?
        .into_inner()
        .deliveries;
    let deliveries: Vec<Value> = deliveries.into_iter().map(delivery_json).collect();
    Ok(Json(json!({ "deliveries": deliveries })))
}
