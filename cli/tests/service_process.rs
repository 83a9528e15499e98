//! Each service as its own process, the way a container or a unit runs it: a bad value of
//! any `STERLING_*` variable stops it at once with a message naming the variable, and with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set it starts and exports its spans under its own
//! `service.name` (to an OTLP receiver in this test).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use sterling::bank::SERVICES;

const STERLING: &str = env!("CARGO_BIN_EXE_sterling");

/// Values each variable must refuse.
const MISSPELT: &[(&str, &str)] = &[
    ("STERLING_DURABILITY", "ful"),
    ("STERLING_CALL_TIMEOUT_MS", "2s"),
    ("STERLING_REGISTRATION_TTL_MS", "ten"),
    ("STERLING_DRAIN_TIMEOUT_MS", "-1"),
    ("STERLING_SHUTDOWN_GRACE_MS", "1.5"),
    ("STERLING_HEALTH_INTERVAL_MS", "5000ms"),
    ("STERLING_MAX_IN_FLIGHT", "0"),
    ("STERLING_NAMESPACE", "Sterling-Prod"),
    ("STERLING_STORAGE", "cassndra"),
    ("STERLING_CASSANDRA_NODES", "localhost"),
    ("STERLING_CASSANDRA_REPLICATION", "SimpleStrategy"),
    ("STERLING_CASSANDRA_CONSISTENCY", "quorom"),
    ("STERLING_NATS_URL", "127.0.0.1:4222"),
    ("STERLING_NATS_REPLICAS", "2"),
    ("STERLING_DISCOVERY", "natss"),
    ("STERLING_BUS", "nat"),
    ("STERLING_LISTEN", "localhost"),
    ("STERLING_METRICS_ADDR", ":9464"),
    ("STERLING_LOG", "info,[bad"),
    ("STERLING_LOG_FORMAT", "jsn"),
    // A name one typo away from a real one.
    ("STERLING_STORGE", "cassandra"),
    ("STERLING_CARD_API_BUGDET_MS", "100"),
];

fn sterling() -> Command {
    let mut command = Command::new(STERLING);
    for (name, _) in std::env::vars() {
        if name.starts_with("STERLING_") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn a_misspelt_value_of_each_variable_stops_the_process_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (variable, value) in MISSPELT {
        for args in [&["config"][..], &["serve", "cards"][..]] {
            let mut command = sterling();
            command
                .args(args)
                .env("STERLING_DATA_DIR", dir.path())
                .env(variable, value);
            let (code, stderr) = run_briefly(command);
            assert_eq!(code, Some(78), "{variable}={value} {args:?}: {stderr}");
            assert!(stderr.contains(variable), "{variable}: {stderr}");
        }
    }
    // Each service's own settings too (free text such as the card-api secret aside).
    let settings = [
        ("card-api", "STERLING_CARD_API_BUDGET_MS", "fast"),
        (
            "card-processing",
            "STERLING_CARD_PROCESSING_SWEEP_INTERVAL_MS",
            "1s",
        ),
        (
            "card-processing",
            "STERLING_CARD_PROCESSING_SWEEP_GRACE_MS",
            "-5",
        ),
        ("fx", "STERLING_FX_RATES_FILE", "/no/such/rates.csv"),
        ("push", "STERLING_PUSH_GATEWAY_URL", "apns.example"),
        ("webhooks", "STERLING_WEBHOOKS_TIMEOUT_MS", "5s"),
        (
            "webhooks",
            "STERLING_WEBHOOKS_RETRY_SCHEDULE_MS",
            "1000,ten",
        ),
    ];
    for (service, variable, value) in settings {
        let mut command = sterling();
        command
            .args(["serve", service])
            .env("STERLING_DATA_DIR", dir.path())
            .env(variable, value);
        let (code, stderr) = run_briefly(command);
        assert!(code.is_some_and(|c| c != 0), "{variable}: {stderr}");
        assert!(stderr.contains(variable), "{variable}: {stderr}");
    }
}

/// Runs a command that should stop by itself; one still running after 10 s is killed (and
/// reported as `None`). Returns its exit code and standard error.
fn run_briefly(mut command: Command) -> (Option<i32>, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (code, stderr)
}

#[test]
fn config_prints_the_effective_values_with_secrets_hidden() {
    let output = sterling()
        .arg("config")
        .env("STERLING_MAX_IN_FLIGHT", "64")
        .env("STERLING_CARD_API_SECRET", "do-not-print-me")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("STERLING_MAX_IN_FLIGHT=64"), "{stdout}");
    assert!(stdout.contains("STERLING_CARD_API_SECRET=***"), "{stdout}");
    assert!(
        stdout.contains("STERLING_CARD_API_BUDGET_MS=100"),
        "{stdout}"
    );
    assert!(!stdout.contains("do-not-print-me"));
}

/// Spans received, by the `service.name` of their resource.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<BTreeMap<String, Vec<String>>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for spans in request.into_inner().resource_spans {
            let service = spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            let names = spans
                .scope_spans
                .iter()
                .flat_map(|s| &s.spans)
                .map(|s| s.name.clone());
            received.entry(service).or_default().extend(names);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_runs_alone_and_exports_spans_under_its_own_name() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("endpoints.json"), "[]").unwrap();
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    for definition in SERVICES {
        let port = common::free_port();
        let mut child = sterling()
            .args(["serve", definition.name])
            .env("STERLING_DATA_DIR", dir.path())
            .env("STERLING_LISTEN", format!("127.0.0.1:{port}"))
            .env("STERLING_SHUTDOWN_GRACE_MS", "0")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // A request that is not a probe, so it is traced: an unknown gRPC method, or an
        // unknown HTTP route.
        let mut answered = false;
        for _ in 0..100 {
            let sent = if definition.name == "card-api" {
                http.get(format!("http://127.0.0.1:{port}/nowhere"))
                    .send()
                    .await
            } else {
                client
                    .post(format!(
                        "http://127.0.0.1:{port}/sterling.nothing.v1.Nothing/Call"
                    ))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .send()
                    .await
            };
            if sent.is_ok() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(answered, "{} did not start", definition.name);
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "{} stopped with {status}",
            definition.name
        );
        let spans = receiver
            .0
            .lock()
            .unwrap()
            .get(definition.name)
            .cloned()
            .unwrap_or_default();
        assert!(
            spans
                .iter()
                .any(|s| s.contains("/nowhere") || s.contains("sterling.nothing.v1")),
            "{}: spans exported under its name: {spans:?}; all: {:?}",
            definition.name,
            receiver.0.lock().unwrap().keys().collect::<Vec<_>>()
        );
    }
    assert!(
        !receiver.0.lock().unwrap().contains_key("sterling"),
        "no span under the process-wide name"
    );
}
