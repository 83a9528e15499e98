//! The continuous mode: every journey every interval, with Prometheus metrics (`/metrics`:
//! journeys by outcome, each step's latency as a histogram) and `/healthz`, which turns
//! unhealthy (503) after a number of consecutive failed runs and healthy again after a run
//! that passes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};

use crate::Runner;
use crate::journeys::Journey;

/// Bucket bounds of the step latency histogram, in seconds.
const STEP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process's Prometheus recorder (once per process).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("sterling_acceptance_step_seconds".into()),
            STEP_BUCKETS,
        )?
        .install_recorder()?)
}

/// Whether the deployment passes its journeys.
pub struct Health {
    unhealthy_after: u32,
    consecutive_failures: AtomicU32,
    last_failure: Mutex<Option<String>>,
}

impl Health {
    /// Unhealthy after `unhealthy_after` failed runs in a row.
    pub fn new(unhealthy_after: u32) -> Arc<Health> {
        Arc::new(Health {
            unhealthy_after: unhealthy_after.max(1),
            consecutive_failures: AtomicU32::new(0),
            last_failure: Mutex::new(None),
        })
    }

    /// Counts a run: a failure of any journey is a failed run.
    pub fn record(&self, journeys: &[Journey]) {
        let failure = journeys.iter().find_map(Journey::failure);
        let failures = match &failure {
            Some(_) => self.consecutive_failures.fetch_add(1, Ordering::SeqCst) + 1,
            None => {
                self.consecutive_failures.store(0, Ordering::SeqCst);
                0
            }
        };
        metrics::gauge!("sterling_acceptance_consecutive_failed_runs").set(f64::from(failures));
        if failure.is_some() {
            *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = failure;
        }
    }

    /// Whether fewer than the limit of runs in a row failed.
    pub fn healthy(&self) -> bool {
        self.consecutive_failures.load(Ordering::SeqCst) < self.unhealthy_after
    }
}

struct Endpoints {
    metrics: PrometheusHandle,
    health: Arc<Health>,
}

/// Serves `/metrics` and `/healthz` on `listen`; returns the address taken.
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
) -> anyhow::Result<SocketAddr> {
    let endpoints = Arc::new(Endpoints { metrics, health });
    let app = axum::Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(healthz))
        .with_state(endpoints);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

async fn render(State(endpoints): State<Arc<Endpoints>>) -> String {
    endpoints.metrics.render()
}

async fn healthz(State(endpoints): State<Arc<Endpoints>>) -> (StatusCode, Json<Value>) {
    let health = &endpoints.health;
    let failures = health.consecutive_failures.load(Ordering::SeqCst);
    let last = health
        .last_failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let body = json!({"consecutive_failed_runs": failures, "last_failure": last});
    if health.healthy() {
        (StatusCode::OK, Json(body))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

/// Runs every journey every `interval` (from the start of one run to the next) until `runs`
/// runs are done (`None`: for ever), recording each in `health`.
pub async fn run_continuously(
    runner: &Runner,
    interval: Duration,
    runs: Option<u64>,
    health: &Health,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut done = 0;
    while runs.is_none_or(|runs| done < runs) {
        tick.tick().await;
        let journeys = runner.run_once().await;
        health.record(&journeys);
        done += 1;
    }
}
