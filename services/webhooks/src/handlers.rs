//! gRPC handlers of webhooks.

use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::webhooks::v1::webhooks_server::Webhooks;
use sterling_proto::webhooks::v1::{
    DeleteWebhookRequest, Delivery, ListDeliveriesRequest, ListDeliveriesResponse,
    ListWebhooksRequest, ListWebhooksResponse, RegisterWebhookRequest, Webhook,
};
use sterling_template::client::GrpcChannel;
use sterling_template::error::required;
use tonic::{Request, Response, Status};

use crate::dispatch::Dispatcher;
use crate::store::{Registry, WebhookRecord};

/// The webhooks gRPC service.
pub struct WebhooksHandlers {
    /// Registrations.
    pub registry: Registry,
    /// Deliveries.
    pub dispatcher: Dispatcher,
    /// The ledger, to refuse a webhook on an account it does not hold.
    pub ledger: LedgerClient<GrpcChannel>,
}

fn to_message(w: WebhookRecord, with_secret: bool) -> Webhook {
    Webhook {
        webhook_id: w.webhook_id,
        account_id: w.account_id,
        url: w.url,
        secret: if with_secret { w.secret } else { String::new() },
        created_at_ms: w.created_at_ms,
    }
}

#[tonic::async_trait]
impl Webhooks for WebhooksHandlers {
    async fn register_webhook(
        &self,
        request: Request<RegisterWebhookRequest>,
    ) -> Result<Response<Webhook>, Status> {
        let r = request.into_inner();
        let key = required("idempotency_key", &r.idempotency_key)?;
        let account_id = required("account_id", &r.account_id)?;
        ledger::client::customer_account(&self.ledger, account_id).await?;
        let webhook = self.registry.register(key, account_id, &r.url).await?;
        tracing::info!(webhook_id = %webhook.webhook_id, "webhook registered");
        Ok(Response::new(to_message(webhook, true)))
    }

    async fn list_webhooks(
        &self,
        request: Request<ListWebhooksRequest>,
    ) -> Result<Response<ListWebhooksResponse>, Status> {
        let r = request.into_inner();
        let webhooks = self
            .registry
            .list(required("account_id", &r.account_id)?)
            .await?;
        Ok(Response::new(ListWebhooksResponse {
            webhooks: webhooks.into_iter().map(|w| to_message(w, false)).collect(),
        }))
    }

    async fn delete_webhook(
        &self,
        request: Request<DeleteWebhookRequest>,
    ) -> Result<Response<Webhook>, Status> {
        let r = request.into_inner();
        self.registry
            .delete(
                required("account_id", &r.account_id)?,
                required("webhook_id", &r.webhook_id)?,
            )
            .await?;
        Ok(Response::new(Webhook {
            webhook_id: r.webhook_id,
            account_id: r.account_id,
            ..Webhook::default()
        }))
    }

    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 20,
            n => (n as usize).min(100),
        };
        let log = self
            .dispatcher
            .log(required("webhook_id", &r.webhook_id)?, limit)
            .await?;
        Ok(Response::new(ListDeliveriesResponse {
            deliveries: log
                .into_iter()
                .map(|d| Delivery {
                    webhook_id: d.webhook_id,
                    event_id: d.event_id,
                    event_type: d.event_type,
                    status: d.status,
                    attempts: d.attempts,
                    last_status_code: d.last_status_code,
                    last_latency_ms: d.last_latency_ms,
                    last_error: d.last_error,
                    next_attempt_at_ms: d.next_attempt_at_ms,
                    delivered_at_ms: d.delivered_at_ms,
                })
                .collect(),
        }))
    }
}
