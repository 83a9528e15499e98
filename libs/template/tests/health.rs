//! gRPC health: a service answers under its short name, its fully-qualified gRPC name and
//! `""`, as grpc-health-probe and Kubernetes ask; at a stop it reports NOT_SERVING while it
//! still serves, so probes see it before the port closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sterling_template::platform::{Checker, Platform, PlatformConfig};
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

/// A channel to a service's address.
async fn connect(address: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The environment's configuration with its data under `dir`.
fn config_in(dir: &std::path::Path) -> PlatformConfig {
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.to_path_buf();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_every_name_and_announces_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.health_interval = Duration::from_millis(50);
    let platform = Platform::embedded(config).unwrap();
    let probe = start_probe(&platform, "probe-health", "p", Behaviour::default(), None)
        .await
        .unwrap();
    let channel = connect(probe.running.address).await;
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
    let config = config_in(dir.path());
    let platform = Platform::embedded(config).unwrap();
    let web = sterling_template::platform::start_with(
        "web-health",
        &[],
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

/// A check that fails once told to.
struct Switch(Arc<AtomicBool>);

#[async_trait::async_trait]
impl Checker for Switch {
    fn name(&self) -> &str {
        "switch"
    }
    async fn check(&self) -> Result<(), String> {
        if self.0.load(Ordering::SeqCst) {
            Err("switched off".into())
        } else {
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_interval_drives_the_checks() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    // Far below the 5 s default: a failure must show within a few rounds.
    config.health_interval = Duration::from_millis(50);
    let platform = Platform::embedded(config).unwrap();
    let probe = start_probe(&platform, "probe-interval", "p", Behaviour::default(), None)
        .await
        .unwrap();
    let off = Arc::new(AtomicBool::new(false));
    probe
        .running
        .context
        .add_checker(Arc::new(Switch(off.clone())));
    let channel = connect(probe.running.address).await;
    let mut client = HealthClient::new(channel);
    off.store(true, Ordering::SeqCst);
    let seen = tokio::time::Instant::now();
    loop {
        if status(&mut client, "probe-interval").await == Ok(ServingStatus::NotServing) {
            break;
        }
        assert!(
            seen.elapsed() < Duration::from_secs(2),
            "checks do not run every 50 ms"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!probe.running.ready());
    off.store(false, Ordering::SeqCst);
    loop {
        if status(&mut client, "probe-interval").await == Ok(ServingStatus::Serving) {
            break;
        }
        assert!(
            seen.elapsed() < Duration::from_secs(4),
            "recovery is seen too"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    probe.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_service_and_health_only() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let platform = Platform::embedded(config).unwrap();
    let probe = start_probe(
        &platform,
        "probe-reflection",
        "p",
        Behaviour::default(),
        None,
    )
    .await
    .unwrap();
    let channel = connect(probe.running.address).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a list of services: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"sterling.testing.v1.Probe".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("sterling.") && n != "sterling.testing.v1.Probe"),
        "only this service's own: {names:?}"
    );
    probe.running.stop().await;
}
