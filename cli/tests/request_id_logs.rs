//! The request id of a payment appears in the JSON log lines of every service it touched,
//! synchronously or through events.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{decision, money, start};
use sterling_template::telemetry::{self, LogFormat};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_a_payment_touches_logs_its_request_id() {
    let captured = Captured::default();
    let sink = captured.clone();
    telemetry::init_with_writer(LogFormat::Json, move || sink.clone());

    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), &[common::RELAXED_BUDGET]).await;
    let customer = bank.seed("logs", money("20.00", "GBP")).await;
    // A euro purchase on a sterling card touches fx as well.
    let outcome = bank
        .pay_with_request_id(
            "auth-logs",
            &customer.card.token,
            money("3.50", "EUR"),
            Some("req-payment-42"),
        )
        .await;
    assert_eq!(decision(&outcome).0, "APPROVED");
    // Then the asynchronous path: wait until the feed has the enriched item.
    let channel = sterling_template::client::GrpcChannel::connect(
        bank.bank.platform.discovery.clone(),
        "feed",
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap()
    .calling_as(&bank.bank.platform.identity, sterling_template::OPERATOR);
    let mut feed = sterling_proto::feed::v1::feed_client::FeedClient::new(channel);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let items = feed
            .list_feed(sterling_proto::feed::v1::ListFeedRequest {
                account_id: customer.account_id.clone(),
                limit: 10,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        if items.first().is_some_and(|i| i.title == "Pret A Manger") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the feed item never got enriched"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    bank.bank.stop().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect();
    let services_with_id: std::collections::BTreeSet<String> = lines
        .iter()
        .filter(|l| l["span"]["request_id"] == "req-payment-42")
        .filter_map(|l| l["span"]["service"].as_str().map(str::to_string))
        .collect();
    for service in [
        "card-api",
        "card-processing",
        "cards",
        "fx",
        "ledger",
        "transactions",
    ] {
        assert!(
            services_with_id.contains(service),
            "no log line of {service} carries the request id; services seen: {services_with_id:?}"
        );
    }
    // One trace: every hop of the payment logged the same trace id.
    let trace_ids: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter(|l| l["span"]["request_id"] == "req-payment-42")
        .filter_map(|l| l["span"]["trace_id"].as_str())
        .collect();
    assert_eq!(trace_ids.len(), 1, "{trace_ids:?}");
}
