//! The operator's commands against a running bank, as the `sterling` command prints them:
//! amounts in major units with their currency, pages with a cursor, colour only on a
//! terminal, and every dependency checked before anything changes.

use std::io::IsTerminal;
use std::time::Duration;

use sterling_money::{Currency, Money};
use sterling_proto::common::v1::Money as MoneyMessage;
use sterling_proto::push::v1::push_client::PushClient;
use sterling_proto::push::v1::{ListDevicesRequest, RegisterDeviceRequest};
use sterling_proto::transactions::v1::ListTransactionsRequest;
use sterling_proto::webhooks::v1::webhooks_client::WebhooksClient;
use sterling_proto::webhooks::v1::{
    ListDeliveriesRequest, ListWebhooksRequest, RegisterWebhookRequest,
};
use sterling_template::OPERATOR;
use sterling_template::client::GrpcChannel;
use sterling_template::discovery::SharedDiscovery;
use sterling_template::identity::Identity;
use sterling_template::platform::Platform;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long an operator's call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How the operator's tools reach a running bank: its discovery, and the identity they call
/// with (the operator's).
#[derive(Clone)]
pub struct Reach {
    /// The bank's discovery.
    pub discovery: SharedDiscovery,
    /// The bank's identity authority, as this process knows it.
    pub identity: Identity,
}

impl Reach {
    /// The bank a platform belongs to.
    pub fn of(platform: &Platform) -> Reach {
        Reach {
            discovery: platform.discovery.clone(),
            identity: platform.identity.clone(),
        }
    }

    /// A channel to `service` through discovery, calling as the operator.
    pub async fn channel(&self, service: &str) -> anyhow::Result<GrpcChannel> {
        self.channel_with(service, CALL_TIMEOUT).await
    }

    /// As [`Reach::channel`], with calls capped at `timeout`.
    pub async fn channel_with(
        &self,
        service: &str,
        timeout: Duration,
    ) -> anyhow::Result<GrpcChannel> {
        let channel = GrpcChannel::connect(self.discovery.clone(), service, timeout).await?;
        Ok(channel.calling_as(&self.identity, OPERATOR))
    }
}

/// Checks that every one of `services` is running and serving, before a command changes
/// anything; the error names those that are not and says why.
pub async fn require(bank: &Reach, services: &[&str]) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for service in services {
        let serving = match bank.channel(service).await {
            Ok(channel) if channel.live_instances() > 0 => HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
                .map(|r| r.into_inner().status() == ServingStatus::Serving)
                .unwrap_or(false),
            _ => false,
        };
        if !serving {
            missing.push(*service);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "not running or not ready: {} (nothing was changed; start {} and try again)",
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" }
        )
    }
}

/// An amount in major units with its currency (`GBP 3.50`); `-` when absent or unknown.
pub fn show_money(money: Option<MoneyMessage>) -> String {
    money
        .and_then(|m| {
            Currency::from_code(&m.currency)
                .ok()
                .map(|c| Money::from_minor(m.minor_units, c).to_string())
        })
        .unwrap_or_else(|| "-".into())
}

/// `minor` units of `currency` in major units (`GBP 3.00` for 300).
pub fn show_minor(minor: i64, currency: &str) -> String {
    show_money(Some(MoneyMessage {
        minor_units: minor,
        currency: currency.to_string(),
    }))
}

/// `text` in green (`good`) or red, when standard output is a terminal.
pub fn paint(text: &str, good: bool) -> String {
    if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        format!("\x1b[{}m{text}\x1b[0m", if good { 32 } else { 31 })
    } else {
        text.to_string()
    }
}

/// Prints an account's statement over the last `days` UTC days: every posting with the
/// running balance after it, worked back from the balance now.
pub async fn statement(bank: &Reach, account: &str, days: u32) -> anyhow::Result<()> {
    let mut ledger = sterling_proto::ledger::v1::ledger_client::LedgerClient::new(
        bank.channel(sterling_proto::ledger::v1::LEDGER_SERVICE)
            .await?,
    );
    let balance = ledger
        .get_balance(sterling_proto::ledger::v1::GetBalanceRequest {
            account_id: account.into(),
        })
        .await
        .map_err(sterling_template::Error::from)?
        .into_inner();
    let now = balance.balance.clone().unwrap_or_default();
    let mut postings = Vec::new();
    let today = sterling_storage::now_millis();
    for back in (0..i64::from(days.max(1))).rev() {
        let day = sterling_storage::utc_date(today - back * 86_400_000);
        let page = ledger
            .list_postings(sterling_proto::ledger::v1::ListPostingsRequest {
                account_id: account.into(),
                day,
            })
            .await
            .map_err(sterling_template::Error::from)?
            .into_inner();
        postings.extend(page.postings);
    }
    let moved: i64 = postings
        .iter()
        .map(|p| p.amount.as_ref().map_or(0, |m| m.minor_units))
        .sum();
    let mut running = now.minor_units - moved;
    println!("opening balance {}", show_minor(running, &now.currency));
    for p in &postings {
        let amount = p.amount.as_ref().map_or(0, |m| m.minor_units);
        running += amount;
        println!(
            "{}  {:>14} {:>14}  {}  ({})",
            sterling_storage::utc_date(p.created_at_ms),
            show_minor(amount, &now.currency),
            show_minor(running, &now.currency),
            p.transfer_id,
            p.counterparty
        );
    }
    println!("balance now {}", show_money(Some(now)));
    Ok(())
}

/// Prints one page of an account's transactions, newest first, and the command for the next.
pub async fn transactions(
    bank: &Reach,
    account: &str,
    limit: u32,
    cursor: Option<String>,
) -> anyhow::Result<()> {
    let mut client = sterling_proto::transactions::v1::transactions_client::TransactionsClient::new(
        bank.channel(sterling_proto::transactions::v1::TRANSACTIONS_SERVICE)
            .await?,
    );
    let page = client
        .list_transactions(ListTransactionsRequest {
            account_id: account.into(),
            limit,
            page_token: cursor.unwrap_or_default(),
        })
        .await
        .map_err(sterling_template::Error::from)?
        .into_inner();
    for t in &page.transactions {
        let status = match t.status {
            1 => "pending",
            2 => "settled",
            3 => "released",
            _ => "?",
        };
        println!(
            "{}  {:<10} {:>14}  {}",
            t.transaction_id,
            status,
            show_money(t.amount.clone()),
            t.merchant_descriptor
        );
    }
    if page.transactions.is_empty() {
        println!("no transactions");
    }
    if !page.next_page_token.is_empty() {
        println!(
            "more: sterling transactions {account} --limit {limit} --cursor {}",
            page.next_page_token
        );
    }
    Ok(())
}

/// Prints the newest `limit` items of an account's feed: id, status, amount, title.
pub async fn feed(bank: &Reach, account: &str, limit: u32) -> anyhow::Result<()> {
    use sterling_proto::feed::v1::{FEED_SERVICE, ListFeedRequest, feed_client::FeedClient};
    let page = FeedClient::new(bank.channel(FEED_SERVICE).await?)
        .list_feed(ListFeedRequest {
            account_id: account.into(),
            limit,
            page_token: String::new(),
        })
        .await
        .map_err(sterling_template::Error::from)?
        .into_inner();
    for item in &page.items {
        println!(
            "{}  {:<9} {:>14}  {}",
            item.item_id,
            item.status,
            show_money(item.amount.clone()),
            item.title
        );
    }
    if page.items.is_empty() {
        println!("no feed items");
    }
    Ok(())
}

/// Registers a device for push notifications.
pub async fn register_device(
    bank: &Reach,
    account: &str,
    token: &str,
    platform: &str,
) -> anyhow::Result<()> {
    require(bank, &[sterling_proto::push::v1::PUSH_SERVICE]).await?;
    let device = PushClient::new(bank.channel(sterling_proto::push::v1::PUSH_SERVICE).await?)
        .register_device(RegisterDeviceRequest {
            account_id: account.into(),
            device_token: token.into(),
            platform: platform.into(),
        })
        .await
        .map_err(sterling_template::Error::from)?
        .into_inner();
    println!(
        "device {} ({}) registered for account {}",
        device.device_token, device.platform, device.account_id
    );
    Ok(())
}

/// Lists an account's devices.
pub async fn list_devices(bank: &Reach, account: &str) -> anyhow::Result<()> {
    let devices = PushClient::new(bank.channel(sterling_proto::push::v1::PUSH_SERVICE).await?)
        .list_devices(ListDevicesRequest {
            account_id: account.into(),
        })
        .await
        .map_err(sterling_template::Error::from)?
        .into_inner()
        .devices;
    for d in &devices {
        println!("{}  {}", d.device_token, d.platform);
    }
    if devices.is_empty() {
        println!("no devices");
    }
    Ok(())
}

/// Registers a webhook; prints its signing secret (shown this once).
pub async fn register_webhook(
    bank: &Reach,
    account: &str,
    url: &str,
    key: &str,
) -> anyhow::Result<()> {
    require(bank, &[sterling_proto::webhooks::v1::WEBHOOKS_SERVICE]).await?;
    let webhook = WebhooksClient::new(
        bank.channel(sterling_proto::webhooks::v1::WEBHOOKS_SERVICE)
            .await?,
    )
    .register_webhook(RegisterWebhookRequest {
        idempotency_key: key.into(),
        account_id: account.into(),
        url: url.into(),
    })
    .await
    .map_err(sterling_template::Error::from)?
    .into_inner();
    println!("webhook {}  {}", webhook.webhook_id, webhook.url);
    if !webhook.secret.is_empty() {
        println!(
            "secret  {}  (verify the Sterling-Signature header with it; shown once)",
            webhook.secret
        );
    }
    Ok(())
}

/// Lists an account's webhooks.
pub async fn list_webhooks(bank: &Reach, account: &str) -> anyhow::Result<()> {
    let webhooks = WebhooksClient::new(
        bank.channel(sterling_proto::webhooks::v1::WEBHOOKS_SERVICE)
            .await?,
    )
    .list_webhooks(ListWebhooksRequest {
        account_id: account.into(),
    })
    .await
    .map_err(sterling_template::Error::from)?
    .into_inner()
    .webhooks;
    for w in &webhooks {
        println!("{}  {}", w.webhook_id, w.url);
    }
    if webhooks.is_empty() {
        println!("no webhooks");
    }
    Ok(())
}

/// Prints a webhook's latest deliveries.
pub async fn deliveries(bank: &Reach, webhook: &str, limit: u32) -> anyhow::Result<()> {
    let deliveries = WebhooksClient::new(
        bank.channel(sterling_proto::webhooks::v1::WEBHOOKS_SERVICE)
            .await?,
    )
    .list_deliveries(ListDeliveriesRequest {
        webhook_id: webhook.into(),
        limit,
    })
    .await
    .map_err(sterling_template::Error::from)?
    .into_inner()
    .deliveries;
    for d in &deliveries {
        let status = paint(&format!("{:<9}", d.status), d.status != "failed");
        println!(
            "{}  {:<28} {status} attempts {}  last HTTP {}  {} ms  {}",
            d.event_id,
            d.event_type,
            d.attempts,
            d.last_status_code,
            d.last_latency_ms,
            d.last_error
        );
    }
    if deliveries.is_empty() {
        println!("no deliveries");
    }
    Ok(())
}
