//! sterling-acceptance: continuous acceptance card payments against a Sterling deployment.
//!
//! A fake customer with a real card on the real system, made idempotently through the public
//! API under a recognisable prefix ([`fixture`]), pays as a processor and a customer would
//! ([`journeys`]): approvals seen through to the feed, the push, the webhook and the balance;
//! declines with their reasons; duplicates; foreign currency; clearing and refund. Every
//! journey undoes its own money movement. Once for CI (`--once`: exit code and a JUnit
//! report, [`report`]), or continuously with metrics and a health endpoint ([`monitor`]).

pub mod api;
pub mod fixture;
pub mod journeys;
pub mod monitor;
pub mod receiver;
pub mod report;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::api::{Balances, Processor};
use crate::fixture::Fixture;
use crate::journeys::Journey;
use crate::receiver::Receiver;

/// What the runner needs to know about the deployment it checks.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gateway's base URL (the public API).
    pub gateway: String,
    /// card-api's base URL.
    pub card_api: String,
    /// The push sink's base URL, if the deployment's push service delivers to one.
    pub push_sink: Option<String>,
    /// The processor's webhook secret (card-api's `secret`).
    pub processor_secret: Vec<u8>,
    /// The acceptance customer's password.
    pub password: String,
    /// What every acceptance customer, key and id starts with.
    pub prefix: String,
    /// Where the webhook receiver listens.
    pub receiver_listen: SocketAddr,
    /// The receiver's URL as the bank reaches it (default: `http://<listen address>/webhooks`).
    pub receiver_url: Option<String>,
    /// The longest an authorisation's round trip may take.
    pub decision_budget: Duration,
    /// The longest the asynchronous path (feed, push, webhook, balance) may take.
    pub async_timeout: Duration,
}

/// A runner with its customer ready.
pub struct Runner {
    /// Its configuration.
    pub config: Config,
    /// The customer's things.
    pub fixture: Fixture,
    /// card-api, as the processor.
    pub processor: Processor,
    /// The customer's webhook receiver.
    pub receiver: Arc<Receiver>,
    http: reqwest::Client,
    run: String,
    sent: AtomicU64,
}

impl Runner {
    /// Starts the receiver and prepares the customer.
    pub async fn start(config: Config) -> anyhow::Result<Runner> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let (receiver, address) = Receiver::start(config.receiver_listen).await?;
        let receiver_url = config
            .receiver_url
            .clone()
            .unwrap_or_else(|| format!("http://{address}/webhooks"));
        let fixture = Fixture::prepare(&config, http.clone(), &receiver, &receiver_url).await?;
        tracing::info!(account_id = %fixture.account_id, card = %fixture.card_token, receiver = %receiver_url, "acceptance customer ready");
        let processor = Processor::new(http.clone(), &config.card_api, &config.processor_secret);
        Ok(Runner {
            config,
            fixture,
            processor,
            receiver,
            http,
            run: uuid::Uuid::now_v7().simple().to_string(),
            sent: AtomicU64::new(0),
        })
    }

    /// Every journey once, in order, after topping the account up if it runs low.
    pub async fn run_once(&self) -> Vec<Journey> {
        let topped = self
            .fixture
            .top_up(&self.config.prefix, self.config.async_timeout)
            .await;
        if let Err(e) = topped {
            tracing::warn!(error = %format!("{e:#}"), "could not top the acceptance account up");
        }
        let mut journeys = Vec::new();
        for name in journeys::JOURNEYS {
            let journey = journeys::run(self, name).await;
            match journey.failure() {
                Some(failure) => tracing::error!(journey = name, "{failure}"),
                None => tracing::info!(
                    journey = name,
                    took_ms = journey.took.as_millis() as u64,
                    "journey passed"
                ),
            }
            journeys.push(journey);
        }
        journeys
    }

    /// A new processor id for `journey`: prefix, this run, journey, a counter.
    pub(crate) fn next_id(&self, journey: &str) -> String {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}-{journey}-{n}", self.config.prefix, self.run)
    }

    /// The account's balances in the read model.
    pub(crate) async fn balances(&self) -> anyhow::Result<Balances> {
        self.fixture.api.account(&self.fixture.account_id).await
    }
}
