//! What containers and clusters need from the `sterling` binary: a healthcheck that works in
//! an image with nothing else in it (`sterling probe`), and who may call each service
//! (`sterling access`), from which the Kubernetes NetworkPolicies are written.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use sterling_template::ServiceDefinition;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the service listening on `listen`'s port on this machine says it is serving: its
/// gRPC health (the overall status), or `GET /healthz` answering 200 for an HTTP service.
pub async fn probe(listen: SocketAddr) -> anyhow::Result<()> {
    let local = SocketAddr::from(([127, 0, 0, 1], listen.port()));
    let grpc = tokio::time::timeout(PROBE_TIMEOUT, grpc_status(local)).await;
    if let Ok(Ok(status)) = grpc {
        return match status {
            ServingStatus::Serving => Ok(()),
            other => anyhow::bail!("{local}: gRPC health says {}", other.as_str_name()),
        };
    }
    let http = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?;
    let response = http
        .get(format!("http://{local}/healthz"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{local}: neither gRPC health nor /healthz answered: {e}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "{local}: /healthz answered {}",
        response.status()
    );
    Ok(())
}

async fn grpc_status(address: SocketAddr) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(PROBE_TIMEOUT)
        .connect()
        .await?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown))
}

/// Every service with the callers its access rules allow, sorted: `operator` for the
/// operator's tools, `*` for anyone.
pub fn access(definitions: &[ServiceDefinition]) -> BTreeMap<&'static str, Vec<&'static str>> {
    definitions
        .iter()
        .map(|d| {
            let mut callers: Vec<&'static str> = d
                .access
                .iter()
                .flat_map(|rule| rule.callers.iter().copied())
                .collect();
            callers.sort_unstable();
            callers.dedup();
            (d.name, callers)
        })
        .collect()
}
