//! The asynchronous path end to end: a swipe's decision fans out over the bus to merchant
//! (enrichment, picked up by transactions), feed, push (through the HTTP/2 push sink) and
//! webhooks (signed POSTs to the customer's receivers), exactly once in effect, with consumers
//! restarted mid-burst and every event delivered twice on purpose.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::receiver::{python_verifies, receiver};
use common::{TestBank, decision, eventually, money, start, start_wrapped};
use sterling::tools;
use sterling_bus::{Acker, Bus, ConsumerConfig, Delivery, Envelope, PublishAck, Subscription};
use sterling_proto::feed::v1::ListFeedRequest;
use sterling_proto::feed::v1::feed_client::FeedClient;
use sterling_proto::push::v1::RegisterDeviceRequest;
use sterling_proto::push::v1::push_client::PushClient;
use sterling_proto::webhooks::v1::webhooks_client::WebhooksClient;
use sterling_proto::webhooks::v1::{ListDeliveriesRequest, RegisterWebhookRequest, Webhook};

async fn sink_deliveries(bank: &TestBank) -> Vec<serde_json::Value> {
    let sink = bank.bank.address("push-sink").unwrap();
    reqwest::get(format!("http://{sink}/deliveries"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Registers `devices` phones and `receivers` webhooks for an account.
async fn subscribe(
    bank: &TestBank,
    account_id: &str,
    devices: usize,
    receivers: &[String],
) -> Vec<Webhook> {
    let mut push = PushClient::new(bank.operator_channel("push").await);
    for d in 0..devices {
        push.register_device(RegisterDeviceRequest {
            account_id: account_id.into(),
            device_token: format!("device-{d}-{account_id}"),
            platform: "ios".into(),
        })
        .await
        .unwrap();
    }
    let mut webhooks = WebhooksClient::new(bank.operator_channel("webhooks").await);
    let mut registered = Vec::new();
    for (i, url) in receivers.iter().enumerate() {
        let w = webhooks
            .register_webhook(RegisterWebhookRequest {
                idempotency_key: format!("{account_id}-{i}"),
                account_id: account_id.into(),
                url: url.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(w.secret.starts_with("whsec_"));
        registered.push(w);
    }
    registered
}

/// Everything the fan-out produced for an account, counted.
struct Outcome {
    enriched: usize,
    feed_items: BTreeMap<String, String>,
    pushes: Vec<String>,
}

async fn outcome(bank: &TestBank, account_id: &str) -> Outcome {
    let listed = tools::transactions(&bank.clients, account_id, 100)
        .await
        .unwrap();
    let enriched = listed
        .iter()
        .filter(|t| !t.merchant_name.is_empty())
        .count();
    let feed = FeedClient::new(bank.operator_channel("feed").await)
        .list_feed(ListFeedRequest {
            account_id: account_id.into(),
            limit: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    let feed_items = feed.into_iter().map(|i| (i.item_id, i.title)).collect();
    let pushes = sink_deliveries(bank)
        .await
        .into_iter()
        .filter(|d| {
            d["device_token"]
                .as_str()
                .unwrap_or_default()
                .ends_with(account_id)
        })
        .map(|d| d["apns_id"].as_str().unwrap().to_string())
        .collect();
    Outcome {
        enriched,
        feed_items,
        pushes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swipe_yields_one_of_everything() {
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), &[common::RELAXED_BUDGET]).await;
    let customer = bank.seed("fanout", money("50.00", "GBP")).await;
    let (a, url_a) = receiver().await;
    let (b, url_b) = receiver().await;
    let hooks = subscribe(&bank, &customer.account_id, 2, &[url_a, url_b]).await;

    let swipe = bank
        .pay_with_request_id(
            "auth-fan-1",
            &customer.card.token,
            money("3.50", "GBP"),
            Some("req-fan-1"),
        )
        .await;
    assert_eq!(decision(&swipe).0, "APPROVED");
    let transaction_id = swipe.body["transaction_id"].as_str().unwrap().to_string();
    let declined = bank
        .pay("auth-fan-2", &customer.card.token, money("500.00", "GBP"))
        .await;
    assert_eq!(decision(&declined).1, "insufficient_funds");

    eventually(Duration::from_secs(20), "the fan-out", || async {
        let o = outcome(&bank, &customer.account_id).await;
        o.enriched == 1
            && o.feed_items.len() == 2
            && o.pushes.len() == 4
            && a.events().0.len() == 2
            && b.events().0.len() == 2
    })
    .await;
    // Let any duplicate arrive before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let o = outcome(&bank, &customer.account_id).await;
    assert_eq!(
        o.enriched, 1,
        "one enriched transaction (the decline records none)"
    );
    assert_eq!(o.feed_items.len(), 2, "one feed item per swipe");
    assert_eq!(
        o.feed_items[&transaction_id], "Pret A Manger",
        "the feed shows the enriched name"
    );
    assert_eq!(o.pushes.len(), 4, "one push per swipe per device");
    assert_eq!(o.pushes.iter().collect::<BTreeSet<_>>().len(), 4);
    let listed = tools::transactions(&bank.clients, &customer.account_id, 10)
        .await
        .unwrap();
    assert_eq!(listed[0].merchant_name, "Pret A Manger");
    assert_eq!(listed[0].category, "eating_out");
    // One signed webhook per swipe per URL, verifiable by a third party.
    for (receiver, hook) in [(&a, &hooks[0]), (&b, &hooks[1])] {
        let (ids, posts) = receiver.events();
        assert_eq!((ids.len(), posts), (2, 2));
        for (headers, body) in receiver.received.lock().unwrap().iter() {
            let signature = headers["sterling-signature"].to_str().unwrap();
            assert!(
                python_verifies(&hook.secret, signature, body),
                "signature verifies"
            );
            assert!(
                !python_verifies("whsec_wrong", signature, body),
                "a wrong secret does not"
            );
            let json: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert!(
                json["type"]
                    .as_str()
                    .unwrap()
                    .starts_with("card.authorisation.")
            );
            assert_eq!(json["data"]["account_id"], customer.account_id.as_str());
        }
    }
    bank.finish().await;
}

/// Delivers every event twice: once for real, then again with an ack that does nothing.
struct Twice(Arc<dyn Bus>);

struct NoAck;

#[async_trait]
impl Acker for NoAck {
    async fn ack(&self) -> sterling_bus::Result<()> {
        Ok(())
    }
    async fn nak(&self, _delay: Duration) -> sterling_bus::Result<()> {
        Ok(())
    }
    async fn term(&self, _reason: &str) -> sterling_bus::Result<()> {
        Ok(())
    }
    async fn in_progress(&self) -> sterling_bus::Result<()> {
        Ok(())
    }
}

struct TwiceSubscription {
    inner: Box<dyn Subscription>,
    again: Option<(Envelope, u32)>,
}

#[async_trait]
impl Subscription for TwiceSubscription {
    async fn next(&mut self) -> sterling_bus::Result<Delivery> {
        if let Some((envelope, attempt)) = self.again.take() {
            return Ok(Delivery::new(
                envelope,
                attempt + 1,
                Duration::ZERO,
                Box::new(NoAck),
            ));
        }
        let delivery = self.inner.next().await?;
        self.again = Some((delivery.envelope.clone(), delivery.attempt));
        Ok(delivery)
    }
}

#[async_trait]
impl Bus for Twice {
    async fn publish(&self, envelope: &Envelope) -> sterling_bus::Result<PublishAck> {
        self.0.publish(envelope).await
    }
    async fn subscribe(
        &self,
        config: ConsumerConfig,
    ) -> sterling_bus::Result<Box<dyn Subscription>> {
        Ok(Box::new(TwiceSubscription {
            inner: self.0.subscribe(config).await?,
            again: None,
        }))
    }
    async fn check(&self) -> sterling_bus::Result<()> {
        self.0.check().await
    }
    async fn browse(
        &self,
        filter: &str,
        after: u64,
        limit: usize,
    ) -> sterling_bus::Result<Vec<sterling_bus::StoredEvent>> {
        self.0.browse(filter, after, limit).await
    }
    async fn backlog(&self, config: &ConsumerConfig) -> sterling_bus::Result<u64> {
        self.0.backlog(config).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_mid_burst_and_double_delivery_still_give_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut bank = start_wrapped(dir.path(), &[common::RELAXED_BUDGET], |mut p| {
        p.bus = Arc::new(Twice(p.bus.clone()));
        p
    })
    .await;
    let customer = bank.seed("burst", money("500.00", "GBP")).await;
    let (hooked, url) = receiver().await;
    subscribe(&bank, &customer.account_id, 2, &[url]).await;

    let swipes = 16;
    let (http, card_api, token) = (
        bank.http.clone(),
        bank.url.clone(),
        customer.card.token.clone(),
    );
    let burst = tokio::spawn(async move {
        for i in 0..swipes {
            let body = tools::authorisation_json(
                &format!("auth-burst-{i}"),
                &token,
                money("1.00", "GBP"),
                "STARBUCKS LEEDS GB",
                "5814",
            );
            let outcome = tools::pay(&http, &card_api, common::SECRET, &body, None)
                .await
                .unwrap();
            assert_eq!(outcome.body["result"], "APPROVED");
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    });
    for service in ["merchant", "feed", "push", "webhooks"] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        bank.bank.restart(service).await.unwrap();
    }
    burst.await.unwrap();

    eventually(Duration::from_secs(30), "the burst's fan-out", || async {
        let o = outcome(&bank, &customer.account_id).await;
        o.enriched == swipes
            && o.feed_items.len() == swipes
            && o.feed_items.values().all(|title| title == "Starbucks")
            && o.pushes.len() >= swipes * 2
            && hooked.events().0.len() == swipes
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let o = outcome(&bank, &customer.account_id).await;
    assert_eq!(o.enriched, swipes);
    assert_eq!(o.feed_items.len(), swipes);
    assert!(o.feed_items.values().all(|title| title == "Starbucks"));
    assert_eq!(
        o.pushes.len(),
        swipes * 2,
        "exactly one push per swipe per device"
    );
    assert_eq!(
        hooked.events().0.len(),
        swipes,
        "one webhook per swipe, by event id"
    );
    bank.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_hanging_receiver_is_retried_logged_and_slows_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let bank = start(
        dir.path(),
        &[
            common::RELAXED_BUDGET,
            ("STERLING_WEBHOOKS_RETRY_SCHEDULE_MS", "100,200,300,400,500"),
            ("STERLING_WEBHOOKS_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let customer = bank.seed("flaky", money("50.00", "GBP")).await;
    let (flaky, flaky_url) = receiver().await;
    flaky.fail_first.store(3, Ordering::SeqCst);
    let (hanging, hanging_url) = receiver().await;
    hanging.hang_ms.store(5_000, Ordering::SeqCst);
    let hooks = subscribe(&bank, &customer.account_id, 1, &[flaky_url, hanging_url]).await;

    let swipe = bank
        .pay("auth-flaky", &customer.card.token, money("2.00", "GBP"))
        .await;
    assert_eq!(decision(&swipe).0, "APPROVED");
    eventually(Duration::from_secs(5), "the push", || async {
        outcome(&bank, &customer.account_id).await.pushes.len() == 1
    })
    .await;
    let push_seen = Instant::now();
    // The flaky receiver gets it on the fourth attempt; the log says so.
    let webhooks = WebhooksClient::new(bank.operator_channel("webhooks").await);
    eventually(Duration::from_secs(10), "the flaky delivery", || async {
        flaky.events().0.len() == 1
    })
    .await;
    let flaky_accepted = flaky.first_accepted.lock().unwrap().unwrap();
    assert!(
        push_seen < flaky_accepted,
        "the push arrived while the webhooks were still failing"
    );
    let log = |id: String| {
        let mut webhooks = webhooks.clone();
        async move {
            webhooks
                .list_deliveries(ListDeliveriesRequest {
                    webhook_id: id,
                    limit: 10,
                })
                .await
                .unwrap()
                .into_inner()
                .deliveries
        }
    };
    eventually(Duration::from_secs(5), "the log", || async {
        log(hooks[0].webhook_id.clone())
            .await
            .first()
            .is_some_and(|d| d.status == "delivered")
    })
    .await;
    let flaky_log = log(hooks[0].webhook_id.clone()).await;
    assert_eq!(flaky_log.len(), 1);
    assert_eq!(flaky_log[0].attempts, 4);
    assert_eq!(flaky_log[0].last_status_code, 200);
    assert!(flaky_log[0].delivered_at_ms > 0);
    // The hanging receiver's attempts time out and are retried, logged as such.
    eventually(
        Duration::from_secs(10),
        "retries of the hanging receiver",
        || async {
            log(hooks[1].webhook_id.clone())
                .await
                .first()
                .is_some_and(|d| d.attempts >= 2)
        },
    )
    .await;
    let hanging_log = log(hooks[1].webhook_id.clone()).await;
    assert_eq!(hanging_log[0].last_error, "timed out");
    assert_ne!(hanging_log[0].status, "delivered");
    let mut webhooks = webhooks;
    let listed = webhooks
        .list_webhooks(sterling_proto::webhooks::v1::ListWebhooksRequest {
            account_id: customer.account_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|w| w.secret.is_empty()),
        "secrets are shown once only"
    );
    bank.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_following_the_feed_sees_its_items_arrive_and_update() {
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), &[common::RELAXED_BUDGET]).await;
    let customer = bank.seed("follower", money("20.00", "GBP")).await;
    let other = bank.seed("stranger", money("20.00", "GBP")).await;
    let mut live = FeedClient::new(bank.operator_channel("feed").await)
        .follow_feed(sterling_proto::feed::v1::FollowFeedRequest {
            account_id: customer.account_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let swipe = bank
        .pay("auth-live-1", &customer.card.token, money("3.50", "GBP"))
        .await;
    assert_eq!(decision(&swipe).0, "APPROVED");
    let theirs = bank
        .pay("auth-live-2", &other.card.token, money("1.00", "GBP"))
        .await;
    assert_eq!(decision(&theirs).0, "APPROVED");
    let transaction_id = swipe.body["transaction_id"].as_str().unwrap().to_string();
    // The item arrives, then its enrichment updates it in place; nothing of the other account.
    let mut titles = Vec::new();
    while !titles.iter().any(|t| t == "Pret A Manger") {
        let item = tokio::time::timeout(Duration::from_secs(10), live.message())
            .await
            .expect("a live update within 10 s")
            .unwrap()
            .expect("the stream stays open");
        assert_eq!(item.account_id, customer.account_id);
        assert_eq!(item.item_id, transaction_id);
        assert_eq!(item.amount.as_ref().unwrap().minor_units, 350);
        titles.push(item.title);
    }
    bank.finish().await;
}
