//! gRPC health: a service answers under its short name, its fully-qualified gRPC name and
//! `""`, as grpc-health-probe and Kubernetes ask; at a stop it reports NOT_SERVING while it
//! still serves, so probes see it before the port closes.

use std::time::Duration;

use sterling_template::platform::{Platform, PlatformConfig};
use sterling_template::testing::{Behaviour, start_probe};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn status(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Code> {
    client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map(|r| r.into_inner().status())
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_every_name_and_announces_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.path().to_path_buf();
    config.health_interval = Duration::from_millis(50);
    let platform = Platform::embedded(config).unwrap();
    let probe = start_probe(&platform, "probe-health", "p", Behaviour::default(), None)
        .await
        .unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", probe.running.address))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client = HealthClient::new(channel);
    for name in ["", "probe-health", "sterling.testing.v1.Probe"] {
        assert_eq!(
            status(&mut client, name).await,
            Ok(ServingStatus::Serving),
            "{name:?}"
        );
    }
    assert_eq!(
        status(&mut client, "sterling.ledger.v1.Ledger").await,
        Err(tonic::Code::NotFound)
    );

    probe.running.announce_stopping().await;
    // The check loop runs every 50 ms: it must not report SERVING again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for name in ["", "probe-health", "sterling.testing.v1.Probe"] {
        assert_eq!(
            status(&mut client, name).await,
            Ok(ServingStatus::NotServing),
            "{name:?}"
        );
    }
    assert!(
        platform
            .discovery
            .resolve("probe-health")
            .await
            .unwrap()
            .is_empty()
    );
    probe.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_service_answers_healthz_and_announces_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.path().to_path_buf();
    let platform = Platform::embedded(config).unwrap();
    let web = sterling_template::platform::start_with(
        "web-health",
        &[],
        &[],
        &platform,
        "127.0.0.1:0".parse().unwrap(),
        |_| Box::pin(async { Ok(sterling_template::Api::Http(axum::Router::new())) }),
    )
    .await
    .unwrap();
    let url = format!("http://{}/healthz", web.address);
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "SERVING");
    web.announce_stopping().await;
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 503, "still answering while it stops");
    web.stop().await;
}
