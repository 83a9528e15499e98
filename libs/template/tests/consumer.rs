//! The event consumer's ack and retry policy, and its metrics: a handled event is counted
//! `handled`, one that can never succeed (`bad_request`) is dead-lettered at once and counted
//! `rejected`, a failure (a panic included) is retried and counted `failed` then
//! `redelivered`; every series exists from the consumer's start, with help text.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sterling_bus::ConsumerConfig;
use sterling_template::ServiceContext;
use sterling_template::platform::{self, Api, Platform, PlatformConfig, RunningService};
use sterling_template::{Error, outbox};

fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new().install_recorder().unwrap();
        sterling_template::telemetry::describe_metrics();
        handle
    })
}

fn series(outcome: &str) -> f64 {
    let text = prometheus().render();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with("sterling_consumer_events_total")
                && l.contains("consumer=\"audit-m\"")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {outcome} series in\n{text}"))
}

/// An embedded platform in `dir` and a service `name` on it whose only work is the consumers
/// `consume` starts.
async fn consuming(
    dir: &std::path::Path,
    name: &'static str,
    consume: impl FnOnce(&ServiceContext) + Send + 'static,
) -> (Platform, RunningService) {
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.to_path_buf();
    let platform = Platform::embedded(config).unwrap();
    let running = platform::start_with(
        name,
        &[],
        &[],
        &[],
        &platform,
        "127.0.0.1:0".parse().unwrap(),
        move |ctx| {
            Box::pin(async move {
                consume(&ctx);
                Ok(Api::Grpc(Default::default()))
            })
        },
    )
    .await
    .unwrap();
    (platform, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_follow_the_policy_and_are_counted() {
    prometheus();
    let dir = tempfile::tempdir().unwrap();
    let flaky_tries = Arc::new(AtomicU32::new(0));
    let tries = flaky_tries.clone();
    let (platform, running) = consuming(dir.path(), "audit-m", move |ctx| {
        let config = ConsumerConfig {
            backoff: vec![Duration::from_millis(20)],
            ..ConsumerConfig::new("audit-m", &["audit.>"])
        };
        ctx.consume(config, move |envelope| {
            let tries = tries.clone();
            async move {
                match envelope.r#type.as_str() {
                    "audit.ok" => Ok(()),
                    "audit.bad" => Err(Error::bad_request("event", "never valid")),
                    _ => {
                        if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                            panic!("the first try panics");
                        }
                        Ok(())
                    }
                }
            }
        });
    })
    .await;
    // Present from the start, at 0, with help text.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(series("rejected"), 0.0);
    assert!(
        prometheus()
            .render()
            .contains("# HELP sterling_consumer_events_total")
    );

    for kind in ["audit.ok", "audit.bad", "audit.flaky"] {
        let envelope = outbox::event(kind, &sterling_proto::events::v1::Envelope::default());
        platform.bus.publish(&envelope).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while series("handled") < 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "events not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(series("rejected"), 1.0);
    assert_eq!(series("failed"), 1.0);
    assert_eq!(
        flaky_tries.load(Ordering::SeqCst),
        2,
        "the panic was retried"
    );
    let text = prometheus().render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("sterling_consumer_redelivered_total")
                && l.contains("audit-m")
                && l.ends_with(" 1")),
        "{text}"
    );
    running.stop().await;
}

/// The order key of the test's events: their type (`order.a`, `order.b`, ...).
fn by_type(envelope: &sterling_proto::events::v1::Envelope) -> Option<String> {
    Some(envelope.r#type.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keys_events_are_handled_in_order_and_different_keys_at_once() {
    use std::collections::HashMap;
    use std::sync::Mutex;

    let dir = tempfile::tempdir().unwrap();
    // Per key: the sequence numbers in the order handled, and how many were in hand at once.
    let handled: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let in_hand: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let most_keys_at_once = Arc::new(AtomicU32::new(0));
    let most_of_one_key = Arc::new(AtomicU32::new(0));
    let (seen, busy, most) = (handled.clone(), in_hand.clone(), most_keys_at_once.clone());
    let most_of_one = most_of_one_key.clone();
    let (platform, running) = consuming(dir.path(), "audit-o", move |ctx| {
        let config = ConsumerConfig {
            concurrency: 8,
            ..ConsumerConfig::new("audit-o", &["order.>"])
        };
        ctx.consume_in_order(config, Some(by_type), move |envelope| {
            let (seen, busy, most) = (seen.clone(), busy.clone(), most.clone());
            let most_of_one = most_of_one.clone();
            async move {
                let key = envelope.r#type.clone();
                let sequence: u32 = envelope.request_id.parse().unwrap();
                {
                    let mut busy = busy.lock().unwrap();
                    let mine = busy.entry(key.clone()).or_default();
                    *mine += 1;
                    most_of_one.fetch_max(*mine, Ordering::SeqCst);
                    let keys = busy.values().filter(|n| **n > 0).count() as u32;
                    most.fetch_max(keys, Ordering::SeqCst);
                }
                // Later events of a key are quicker, so any reordering would show.
                tokio::time::sleep(Duration::from_millis(u64::from(20 - sequence))).await;
                seen.lock()
                    .unwrap()
                    .entry(key.clone())
                    .or_default()
                    .push(sequence);
                *busy.lock().unwrap().get_mut(&key).unwrap() -= 1;
                Ok(())
            }
        });
    })
    .await;

    for sequence in 0..20u32 {
        for key in ["order.a", "order.b", "order.c"] {
            let mut envelope = outbox::event(key, &sterling_proto::events::v1::Envelope::default());
            envelope.request_id = sequence.to_string();
            platform.bus.publish(&envelope).await.unwrap();
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while handled
        .lock()
        .unwrap()
        .values()
        .map(Vec::len)
        .sum::<usize>()
        < 60
    {
        assert!(tokio::time::Instant::now() < deadline, "events not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    let handled = handled.lock().unwrap();
    for key in ["order.a", "order.b", "order.c"] {
        assert_eq!(
            handled[key],
            (0..20).collect::<Vec<_>>(),
            "{key} out of order"
        );
    }
    assert!(
        most_keys_at_once.load(Ordering::SeqCst) >= 2,
        "different keys were never handled at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_waiting_behind_its_key_is_not_delivered_again() {
    prometheus();
    let dir = tempfile::tempdir().unwrap();
    let handled = Arc::new(AtomicU32::new(0));
    let count = handled.clone();
    let (platform, running) = consuming(dir.path(), "audit-w", move |ctx| {
        // Each event takes three ack waits; the second waits three more behind the first.
        let config = ConsumerConfig {
            concurrency: 8,
            ack_wait: Duration::from_millis(200),
            ..ConsumerConfig::new("audit-w", &["wait.>"])
        };
        ctx.consume_in_order(config, Some(by_type), move |_| {
            let count = count.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                count.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        });
    })
    .await;
    for _ in 0..2 {
        let envelope = outbox::event("wait.a", &sterling_proto::events::v1::Envelope::default());
        platform.bus.publish(&envelope).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "events not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for a redelivery of either to have arrived and run.
    tokio::time::sleep(Duration::from_millis(800)).await;
    running.stop().await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        2,
        "an event was handled twice"
    );
    let text = prometheus().render();
    let redelivered = text
        .lines()
        .find(|l| l.starts_with("sterling_consumer_redelivered_total") && l.contains("audit-w"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert_eq!(redelivered, 0.0, "{text}");
}

/// The value of `metric` for consumer `consumer` (0 when it has no series); `metric` may end
/// with labels, `name{label="value"`, that the series must have too.
fn consumer_metric(metric: &str, consumer: &str) -> f64 {
    let (name, label) = metric.split_once('{').unwrap_or((metric, ""));
    let text = prometheus().render();
    text.lines()
        .find(|l| {
            l.starts_with(name)
                && l.contains(label)
                && l.contains(&format!("consumer=\"{consumer}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A consumer `durable` whose handler fails with `unavailable` (a store restarting, say) on
/// its first `failures` runs, then succeeds; its runs so far.
async fn failing_at_first(
    dir: &std::path::Path,
    durable: &'static str,
    failures: u32,
    config: impl FnOnce(ConsumerConfig) -> ConsumerConfig + Send + 'static,
) -> (Platform, RunningService, Arc<AtomicU32>) {
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let (platform, running) = consuming(dir, durable, move |ctx| {
        let subject = format!("{durable}.>");
        ctx.consume(
            config(ConsumerConfig::new(durable, &[subject.as_str()])),
            move |_| {
                let counted = counted.clone();
                async move {
                    if counted.fetch_add(1, Ordering::SeqCst) < failures {
                        return Err(Error::unavailable("store", "the store is restarting"));
                    }
                    Ok(())
                }
            },
        );
    })
    .await;
    (platform, running, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_waited_out_in_hand_without_spending_deliveries() {
    prometheus();
    let dir = tempfile::tempdir().unwrap();
    // Four failures: the handler is run again after 0.2, 0.4, 0.8 and 1.6 s, in all ten ack
    // waits; two deliveries would have dead-lettered it at its second failure.
    let (platform, running, runs) =
        failing_at_first(dir.path(), "outage-h", 4, |config| ConsumerConfig {
            ack_wait: Duration::from_millis(300),
            max_deliver: 2,
            backoff: vec![Duration::from_millis(20)],
            ..config
        })
        .await;
    let envelope = outbox::event(
        "outage-h.a",
        &sterling_proto::events::v1::Envelope::default(),
    );
    platform.bus.publish(&envelope).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while consumer_metric(
        "sterling_consumer_events_total{outcome=\"handled\"",
        "outage-h",
    ) < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event was not handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for a redelivery beside it to have arrived and run.
    tokio::time::sleep(Duration::from_millis(700)).await;
    running.stop().await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        5,
        "four failures, then one success"
    );
    assert_eq!(
        consumer_metric("sterling_consumer_retried_in_hand_total", "outage-h"),
        4.0
    );
    assert_eq!(
        consumer_metric("sterling_consumer_redelivered_total", "outage-h"),
        0.0,
        "the outage spent no delivery"
    );
    assert_eq!(
        consumer_metric("sterling_consumer_dead_lettered_total", "outage-h"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_time_held_spends_deliveries_as_before() {
    prometheus();
    let dir = tempfile::tempdir().unwrap();
    // Held 300 ms: one run again after 200 ms, then naked; two deliveries, then a dead letter.
    let (platform, running, runs) =
        failing_at_first(dir.path(), "outage-l", u32::MAX, |config| ConsumerConfig {
            max_deliver: 2,
            backoff: vec![Duration::from_millis(20)],
            held_through_outage: Duration::from_millis(300),
            ..config
        })
        .await;
    let envelope = outbox::event(
        "outage-l.a",
        &sterling_proto::events::v1::Envelope::default(),
    );
    platform.bus.publish(&envelope).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while consumer_metric("sterling_consumer_dead_lettered_total", "outage-l") < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        4,
        "two runs in each of two deliveries"
    );
    assert_eq!(
        consumer_metric("sterling_consumer_redelivered_total", "outage-l"),
        1.0
    );
}
