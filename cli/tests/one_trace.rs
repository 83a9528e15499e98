//! One trace per payment: the OpenTelemetry spans of every synchronous hop and every event
//! consumer share the payment's trace id, each hanging under the span that caused it.

mod common;

use std::time::{Duration, Instant};

use common::{decision, money, start};
use opentelemetry::Value;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sterling_proto::push::v1::RegisterDeviceRequest;
use sterling_proto::push::v1::push_client::PushClient;
use sterling_template::telemetry::{self, LogFormat};

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn service(span: &SpanData) -> String {
    attribute(span, "service")
        .map(|v| v.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_is_one_trace_across_hops_and_events() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    telemetry::init_with(
        LogFormat::Json,
        telemetry::DEFAULT_FILTER,
        std::io::sink,
        Some(provider),
    );

    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), &[common::RELAXED_BUDGET]).await;
    let customer = bank.seed("trace", money("20.00", "GBP")).await;
    PushClient::new(bank.operator_channel("push").await)
        .register_device(RegisterDeviceRequest {
            account_id: customer.account_id.clone(),
            device_token: "trace-phone".into(),
            platform: "android".into(),
        })
        .await
        .unwrap();
    let outcome = bank
        .pay_with_request_id(
            "auth-trace",
            &customer.card.token,
            money("3.50", "EUR"),
            Some("req-trace-1"),
        )
        .await;
    assert_eq!(decision(&outcome).0, "APPROVED");

    // Wait for the last consumers (feed takes the enrichment; push sends).
    let deadline = Instant::now() + Duration::from_secs(15);
    let wanted = ["feed", "push", "merchant", "transactions", "webhooks"];
    let payment_spans = loop {
        let spans = exporter.get_finished_spans().unwrap();
        let ours: Vec<SpanData> = spans
            .into_iter()
            .filter(|s| attribute(s, "request_id").is_some_and(|v| v.to_string() == "req-trace-1"))
            .collect();
        let consumers: Vec<String> = ours
            .iter()
            .filter(|s| attribute(s, "event_type").is_some())
            .map(service)
            .collect();
        if wanted.iter().all(|w| consumers.iter().any(|c| c == w))
            && ours.iter().any(|s| {
                service(s) == "feed"
                    && attribute(s, "event_type")
                        .is_some_and(|v| v.to_string() == "transaction.enriched")
            })
        {
            break ours;
        }
        assert!(
            Instant::now() < deadline,
            "consumer spans missing: {consumers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bank.bank.stop().await;

    let trace_ids: std::collections::BTreeSet<String> = payment_spans
        .iter()
        .map(|s| s.span_context.trace_id().to_string())
        .collect();
    assert_eq!(trace_ids.len(), 1, "one trace for the whole payment");
    let trace_id = payment_spans[0].span_context.trace_id();
    // Every span of the trace, client and producer spans included.
    let all: Vec<SpanData> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .collect();

    let find = |service_name: &str, event: Option<&str>| {
        payment_spans
            .iter()
            .find(|s| {
                service(s) == service_name
                    && match event {
                        None => attribute(s, "event_type").is_none() && s.name != "task",
                        Some(e) => attribute(s, "event_type").is_some_and(|v| v.to_string() == e),
                    }
            })
            .unwrap_or_else(|| panic!("no span of {service_name} {event:?}"))
    };
    // The span a hop hangs under directly: a client span for a call, a producer span for an
    // event; and above it, the span of the work that made the call or the event.
    let hop = |child: &SpanData, kind: SpanKind| -> SpanData {
        let link = all
            .iter()
            .find(|s| s.span_context.span_id() == child.parent_span_id)
            .unwrap_or_else(|| panic!("the parent of {} was exported", child.name));
        assert_eq!(
            link.span_kind, kind,
            "{} hangs under a {kind:?} span",
            child.name
        );
        all.iter()
            .find(|s| s.span_context.span_id() == link.parent_span_id)
            .unwrap_or_else(|| panic!("the parent of {} was exported", link.name))
            .clone()
    };
    let card_api = find("card-api", None);
    let card_processing = find("card-processing", None);
    let ledger = find("ledger", None);
    let merchant = find("merchant", Some("card.authorisation.approved"));
    let feed_enriched = find("feed", Some("transaction.enriched"));
    let push = find("push", Some("card.authorisation.approved"));
    // Each hop hangs under the span that caused it, through the call or the publish.
    let id = |s: &SpanData| s.span_context.span_id();
    assert_eq!(id(&hop(card_processing, SpanKind::Client)), id(card_api));
    assert_eq!(id(&hop(ledger, SpanKind::Client)), id(card_processing));
    assert_eq!(id(&hop(merchant, SpanKind::Producer)), id(card_processing));
    assert_eq!(id(&hop(push, SpanKind::Producer)), id(card_processing));
    assert_eq!(id(&hop(feed_enriched, SpanKind::Producer)), id(merchant));
}
