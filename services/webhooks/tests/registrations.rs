//! webhooks' registrations through the gRPC API on the embedded engines: registering is
//! idempotent on the caller's key (the signing secret is answered only there), a key reused
//! for another URL is refused, and a deleted webhook is no longer listed.

use std::time::Duration;

use sterling_proto::webhooks::v1::webhooks_client::WebhooksClient;
use sterling_proto::webhooks::v1::{
    DeleteWebhookRequest, ListDeliveriesRequest, ListWebhooksRequest, RegisterWebhookRequest,
};
use sterling_template::client::GrpcChannel;
use sterling_template::platform::{self, Platform, PlatformConfig};

fn code(status: tonic::Status) -> String {
    sterling_template::Error::from(status).code().to_string()
}

fn register(key: &str, account: &str, url: &str) -> RegisterWebhookRequest {
    RegisterWebhookRequest {
        idempotency_key: key.into(),
        account_id: account.into(),
        url: url.into(),
    }
}

#[tokio::test]
async fn webhooks_are_registered_once_listed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.path().to_path_buf();
    let platform = Platform::embedded(config).unwrap();
    let _ledger = ledger::testing::start_with_customers(&platform, &[("acc-1", "GBP")])
        .await
        .unwrap();
    let running = platform::start(
        &webhooks::SERVICE,
        &platform,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let channel = GrpcChannel::connect(
        platform.discovery.clone(),
        "webhooks",
        Duration::from_secs(2),
    )
    .await
    .unwrap()
    .calling_as(&platform.identity, sterling_template::OPERATOR);
    let mut webhooks = WebhooksClient::new(channel);

    let url = "https://receiver.example/hooks";
    let first = webhooks
        .register_webhook(register("w1", "acc-1", url))
        .await
        .unwrap()
        .into_inner();
    assert!(first.secret.starts_with("whsec_"));
    let repeat = webhooks
        .register_webhook(register("w1", "acc-1", url))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        repeat.webhook_id, first.webhook_id,
        "a repeat answers the registration"
    );
    let other = webhooks
        .register_webhook(register("w1", "acc-1", "https://other.example/"))
        .await
        .unwrap_err();
    assert!(code(other).starts_with("conflict"));

    let listed = webhooks
        .list_webhooks(ListWebhooksRequest {
            account_id: "acc-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].url, url);
    assert!(listed[0].secret.is_empty(), "the secret is never listed");
    let deliveries = webhooks
        .list_deliveries(ListDeliveriesRequest {
            webhook_id: first.webhook_id.clone(),
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert!(deliveries.is_empty());

    webhooks
        .delete_webhook(DeleteWebhookRequest {
            account_id: "acc-1".into(),
            webhook_id: first.webhook_id.clone(),
        })
        .await
        .unwrap();
    let listed = webhooks
        .list_webhooks(ListWebhooksRequest {
            account_id: "acc-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert!(listed.is_empty());
    assert_eq!(
        code(
            webhooks
                .register_webhook(register("", "acc-1", url))
                .await
                .unwrap_err()
        ),
        "bad_request.idempotency_key"
    );
    // No webhook on an account the ledger does not hold.
    let nowhere = webhooks
        .register_webhook(register("w9", "acc-none", url))
        .await
        .unwrap_err();
    assert_eq!(code(nowhere), "not_found.account");
    running.stop().await;
}
