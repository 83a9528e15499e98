//! The event consumer's ack and retry policy, and its metrics: a handled event is counted
//! `handled`, one that can never succeed (`bad_request`) is dead-lettered at once and counted
//! `rejected`, a failure (a panic included) is retried and counted `failed` then
//! `redelivered`; every series exists from the consumer's start, with help text.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sterling_bus::ConsumerConfig;
use sterling_template::platform::{self, Api, Platform, PlatformConfig};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_follow_the_policy_and_are_counted() {
    prometheus();
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.path().to_path_buf();
    let platform = Platform::embedded(config).unwrap();
    let flaky_tries = Arc::new(AtomicU32::new(0));
    let tries = flaky_tries.clone();
    let running = platform::start_with(
        "audit-m",
        &[],
        &[],
        &[],
        &platform,
        "127.0.0.1:0".parse().unwrap(),
        move |ctx| {
            Box::pin(async move {
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
                Ok(Api::Grpc(Default::default()))
            })
        },
    )
    .await
    .unwrap();
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
