//! The push gateway client, shaped like APNs: an HTTP/2 POST of a JSON payload to
//! `{gateway}/3/device/{token}` with `apns-id`, `apns-push-type` and `apns-priority` headers.

use std::time::Duration;

use serde_json::json;
use sterling_template::discovery::{Protocol, SharedDiscovery};
use sterling_template::{Error, Result};

/// The push-gateway client.
#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    /// Fixed gateway URL, or none to find the local push sink through discovery.
    url: Option<String>,
    discovery: SharedDiscovery,
}

/// A notification to one device.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Device token.
    pub device_token: String,
    /// Unique per event and device; the gateway may use it to drop repeats.
    pub apns_id: String,
    /// Alert title.
    pub title: String,
    /// Alert body.
    pub body: String,
    /// The transaction the notification is about.
    pub transaction_id: String,
    /// The event it announces.
    pub event_id: String,
}

impl Gateway {
    /// A client for `url` (`STERLING_PUSH_GATEWAY_URL`), or for the `push-sink` service in
    /// discovery when `url` is empty.
    pub fn new(url: &str, discovery: SharedDiscovery) -> anyhow::Result<Gateway> {
        let http = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Gateway {
            http,
            url: (!url.is_empty()).then(|| url.trim_end_matches('/').to_string()),
            discovery,
        })
    }

    async fn base_url(&self) -> Result<String> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        let sink = self
            .discovery
            .resolve("push-sink")
            .await?
            .into_iter()
            .find(|r| r.protocol == Protocol::Http)
            .ok_or_else(|| {
                Error::unavailable("push_gateway", "no push gateway configured or discovered")
            })?;
        Ok(format!("http://{}", sink.address))
    }

    /// Sends one notification; `Ok` once the gateway accepted it.
    pub async fn send(&self, n: &Notification) -> Result<()> {
        let url = format!("{}/3/device/{}", self.base_url().await?, n.device_token);
        let payload = json!({
            "aps": { "alert": { "title": n.title, "body": n.body }, "sound": "default" },
            "transaction_id": n.transaction_id,
            "event_id": n.event_id,
        });
        let response = self
            .http
            .post(url)
            .header("apns-id", &n.apns_id)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-topic", "dev.sterling.app")
            .json(&payload)
            .send()
            .await
            .map_err(|e| Error::unavailable("push_gateway", e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let error = Error::unavailable("push_gateway", format!("gateway answered {status}"))
                .with_param("status", status.as_u16());
            // 4xx (bad token, bad payload) will not get better by retrying.
            Err(if status.is_client_error() {
                error.with_retryable(false)
            } else {
                error
            })
        }
    }
}
