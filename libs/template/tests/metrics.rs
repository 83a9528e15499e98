//! What the template counts: requests and durations on both sides, retries, hedges, ejections
//! and sheds, as Prometheus renders them.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use sterling_proto::testing::v1::ProbeRequest;
use sterling_proto::testing::v1::probe_client::ProbeClient;
use sterling_template::client::GrpcChannel;
use sterling_template::client::policy::ClientPolicy;
use sterling_template::platform::{Platform, PlatformConfig};
use sterling_template::testing::{Behaviour, start_probe};

fn request() -> ProbeRequest {
    ProbeRequest {
        payload: "x".into(),
        downstream: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hedges_ejections_and_sheds_are_counted() {
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.path().to_path_buf();
    config.max_in_flight = 2;
    let platform = Platform::embedded(config).unwrap();
    let ok = Behaviour {
        delay: Duration::from_millis(1),
        tail: Some((0.2, Duration::from_millis(40))),
        ..Behaviour::default()
    };
    let failing = Behaviour {
        fail: Some(tonic::Code::Unavailable),
        ..Behaviour::default()
    };
    start_probe(&platform, "probe-m", "ok-1", ok.clone(), None)
        .await
        .unwrap();
    start_probe(&platform, "probe-m", "ok-2", ok, None)
        .await
        .unwrap();
    start_probe(&platform, "probe-m", "bad", failing, None)
        .await
        .unwrap();
    let policy = ClientPolicy {
        hedge_min_samples: 5,
        hedge_percentile: 0.5,
        ..ClientPolicy::default()
    };
    let channel = GrpcChannel::connect_with(platform.discovery.clone(), "probe-m", policy)
        .await
        .unwrap()
        .calling_as(&platform.identity, sterling_template::OPERATOR);
    let mut probe = ProbeClient::new(channel);
    for _ in 0..60 {
        let _ = probe.read(request()).await;
    }
    // Overload: more at once than the servers take.
    let mut burst = Vec::new();
    for _ in 0..20 {
        let mut probe = probe.clone();
        burst.push(tokio::spawn(async move { probe.write(request()).await }));
    }
    for b in burst {
        let _ = b.await.unwrap();
    }
    let text = prometheus.render();
    for metric in [
        "sterling_client_requests_total",
        "sterling_client_request_duration_seconds",
        "sterling_server_requests_total",
        "sterling_server_request_duration_seconds",
        "sterling_client_retries_total",
        "sterling_client_hedges_total",
        "sterling_client_ejections_total",
        "sterling_server_shed_total",
    ] {
        assert!(text.contains(metric), "{metric} missing from:\n{text}");
    }
    assert!(text.contains("method=\"Read\""));
}
