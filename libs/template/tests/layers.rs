//! Each layer of the server stack proves its one job, on a gRPC service (the probe) and on an
//! HTTP service (an axum router) alike: the request context and request id, metrics, expired
//! deadlines, load shedding, the panic guard and, on HTTP, problem documents for every error;
//! on gRPC, callers without the bank's identity refused before any handler, probes let in.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sterling_proto::testing::v1::ProbeRequest;
use sterling_proto::testing::v1::probe_client::ProbeClient;
use sterling_template::OPERATOR;
use sterling_template::context::RequestContext;
use sterling_template::platform::{self, Api, Platform, PlatformConfig, RunningService};
use sterling_template::testing::{Behaviour, start_probe};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new().install_recorder().unwrap();
        sterling_template::telemetry::describe_metrics();
        handle
    })
}

/// The value of the one series whose name and labels contain every one of `parts`.
fn series(parts: &[&str]) -> f64 {
    let text = prometheus().render();
    let line = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no series with {parts:?} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A plain tonic client of a probe, carrying the operator's identity token.
async fn probe_client(
    platform: &Platform,
    address: SocketAddr,
) -> ProbeClient<InterceptedService<Channel, impl Interceptor + Clone + use<>>> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = platform.identity.header_for(OPERATOR).unwrap();
    let token = tonic::metadata::MetadataValue::try_from(token.as_bytes()).unwrap();
    ProbeClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
        Ok(request)
    })
}

fn platform(dir: &std::path::Path, max_in_flight: usize) -> Platform {
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.to_path_buf();
    config.max_in_flight = max_in_flight;
    Platform::embedded(config).unwrap()
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(2)).await;
    "slow"
}

async fn boom() -> &'static str {
    panic!("the handler panics on purpose")
}

async fn request_id() -> String {
    RequestContext::current_request_id()
}

async fn echo(body: axum::Json<serde_json::Value>) -> axum::Json<serde_json::Value> {
    body
}

async fn start_web(platform: &Platform, name: &'static str) -> RunningService {
    let router = Router::new()
        .route("/slow", get(slow))
        .route("/boom", get(boom))
        .route("/id", get(request_id))
        .route("/echo", post(echo))
        .layer(DefaultBodyLimit::max(64));
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    platform::start_with(name, &[], &[], &[], platform, listen, move |_| {
        Box::pin(async move { Ok(Api::Http(router)) })
    })
    .await
    .unwrap()
}

fn is_problem(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/problem+json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sheds_past_the_bound_and_counts_it() {
    prometheus();
    let dir = tempfile::tempdir().unwrap();
    let web = start_web(&platform(dir.path(), 1), "web-shed").await;
    let url = format!("http://{}/slow", web.address);
    let client = reqwest::Client::new();
    let first = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(url).send().await.unwrap().status() }
    });
    // The first holds the only place for 2 s; 100 ms is ample for it to get there.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = client.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert!(is_problem(&second));
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["code"], "unavailable.overloaded");
    assert_eq!(body["retryable"], true);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(
        series(&["sterling_server_shed_total", "service=\"web-shed\""]),
        1.0
    );
    assert_eq!(
        series(&[
            "sterling_server_requests_total",
            "service=\"web-shed\"",
            "method=\"GET /slow\"",
            "status=\"503\""
        ]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sheds_past_the_bound_and_counts_it() {
    prometheus();
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path(), 1);
    let slow = Behaviour {
        delay: Duration::from_secs(2),
        ..Behaviour::default()
    };
    let probe = start_probe(&platform, "probe-shed", "p", slow, None)
        .await
        .unwrap();
    let client = probe_client(&platform, probe.running.address).await;
    let first = tokio::spawn({
        let mut client = client.clone();
        async move { client.read(request()).await }
    });
    // The first is in its handler (holding the only place) before the second is sent.
    while probe
        .counters
        .received
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = client.clone().read(request()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(
        refused.metadata().get("sterling-error-code").unwrap(),
        "unavailable.overloaded"
    );
    assert!(first.await.unwrap().is_ok());
    assert_eq!(
        series(&["sterling_server_shed_total", "service=\"probe-shed\""]),
        1.0
    );
    assert_eq!(
        series(&[
            "sterling_server_requests_total",
            "service=\"probe-shed\"",
            "method=\"Read\"",
            "code=\"UNAVAILABLE\""
        ]),
        1.0
    );
}

fn request() -> ProbeRequest {
    ProbeRequest {
        payload: "x".into(),
        downstream: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_http_handler_answers_500_problem_and_is_counted() {
    prometheus();
    let dir = tempfile::tempdir().unwrap();
    let web = start_web(&platform(dir.path(), 8), "web-panic").await;
    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{}/boom", web.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert!(is_problem(&response));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "internal");
    // The server lives on.
    let after = client
        .get(format!("http://{}/id", web.address))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(
        series(&["sterling_server_panics_total", "service=\"web-panic\""]),
        1.0
    );
    assert_eq!(
        series(&[
            "sterling_server_requests_total",
            "service=\"web-panic\"",
            "method=\"GET /boom\"",
            "status=\"500\""
        ]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_grpc_handler_answers_internal_and_is_counted() {
    prometheus();
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path(), 8);
    let panics = Behaviour {
        panic: true,
        ..Behaviour::default()
    };
    let probe = start_probe(&platform, "probe-panic", "p", panics, None)
        .await
        .unwrap();
    let mut client = probe_client(&platform, probe.running.address).await;
    let error = client.read(request()).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Internal);
    probe.behaviour.lock().unwrap().panic = false;
    assert!(
        client.read(request()).await.is_ok(),
        "the connection lives on"
    );
    assert_eq!(
        series(&["sterling_server_panics_total", "service=\"probe-panic\""]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deadlines_are_refused_on_both_protocols() {
    prometheus();
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path(), 8);
    let web = start_web(&platform, "web-late").await;
    let response = reqwest::Client::new()
        .get(format!("http://{}/slow", web.address))
        .header("grpc-timeout", "0m")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(is_problem(&response));
    assert_eq!(
        series(&["sterling_server_expired_total", "service=\"web-late\""]),
        1.0
    );

    let probe = start_probe(&platform, "probe-late", "p", Behaviour::default(), None)
        .await
        .unwrap();
    // A raw HTTP/2 call, so that no client-side timer can give up before the server answers.
    let late = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .post(format!(
            "http://{}/sterling.testing.v1.Probe/Read",
            probe.running.address
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "0m")
        .header(
            "authorization",
            platform.identity.header_for(OPERATOR).unwrap(),
        )
        .body(vec![0u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(late.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert_eq!(late.headers()["sterling-error-code"], "timeout");
    assert_eq!(
        probe
            .counters
            .received
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        series(&["sterling_server_expired_total", "service=\"probe-late\""]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_is_the_callers_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let web = start_web(&platform(dir.path(), 8), "web-id").await;
    let response = reqwest::Client::new()
        .get(format!("http://{}/id", web.address))
        .header("x-request-id", "req-layers-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-layers-1");
    assert_eq!(response.text().await.unwrap(), "req-layers-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_error_is_a_problem_document() {
    let dir = tempfile::tempdir().unwrap();
    let web = start_web(&platform(dir.path(), 8), "web-problems").await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", web.address);
    let cases = [
        (
            client.get(format!("{base}/nowhere")),
            404,
            "not_found.route",
        ),
        (
            client.delete(format!("{base}/id")),
            405,
            "bad_request.method",
        ),
        (
            client
                .post(format!("{base}/echo"))
                .header("content-type", "application/json")
                .body(format!("{{\"pad\": \"{}\"}}", "x".repeat(200))),
            413,
            "bad_request.too_large",
        ),
        (
            client.post(format!("{base}/echo")).body("{}"),
            415,
            "bad_request.content_type",
        ),
        (
            client
                .post(format!("{base}/echo"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "bad_request.body",
        ),
    ];
    for (request, status, code) in cases {
        let response = request
            .header("x-request-id", "req-problem")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{code}");
        assert!(is_problem(&response), "{code} is a problem document");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], code);
        assert_eq!(body["status"], status);
        assert_eq!(body["request_id"], "req-problem");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_without_the_banks_identity_are_refused_and_probes_let_in() {
    prometheus();
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path(), 8);
    let probe = start_probe(&platform, "probe-door", "p", Behaviour::default(), None)
        .await
        .unwrap();
    let raw = |token: Option<String>| {
        let mut call = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap()
            .post(format!(
                "http://{}/sterling.testing.v1.Probe/Read",
                probe.running.address
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(vec![0u8; 5]);
        if let Some(token) = token {
            call = call.header("authorization", token);
        }
        call.send()
    };
    let other_bank = {
        let other = tempfile::tempdir().unwrap();
        sterling_template::identity::Identity::load_or_create(&other.path().join("k"))
            .unwrap()
            .mint("probe-door", Duration::from_secs(60))
            .unwrap()
    };
    let expired = platform
        .identity
        .mint("probe-door", Duration::ZERO)
        .unwrap();
    for token in [
        None,
        Some("Bearer nonsense".to_string()),
        Some(format!("Bearer {other_bank}")),
        Some(format!("Bearer {expired}")),
    ] {
        let refused = raw(token.clone()).await.unwrap();
        assert_eq!(refused.headers()["grpc-status"], "16", "{token:?}");
        assert_eq!(
            refused.headers()["sterling-error-code"],
            "unauthorized.service_identity"
        );
    }
    assert_eq!(
        probe
            .counters
            .received
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        series(&[
            "sterling_server_refused_total",
            "service=\"probe-door\"",
            "reason=\"unauthenticated\""
        ]),
        4.0
    );
    let token = platform.identity.header_for(OPERATOR).unwrap();
    let let_in = raw(Some(token.to_str().unwrap().to_string()))
        .await
        .unwrap();
    assert_eq!(let_in.status(), 200);
    assert!(
        let_in.headers().get("grpc-status").is_none(),
        "answered by the handler"
    );

    // Health is open to any prober.
    let channel = Channel::from_shared(format!("http://{}", probe.running.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "probe-door".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
}
