//! Health: the in-band checks a service runs every `STERLING_HEALTH_INTERVAL_MS`, the
//! readiness they add up to, and the gRPC health service that reports it under the service's
//! short name (`ledger`), each fully-qualified gRPC name (`sterling.ledger.v1.Ledger`) and `""`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sterling_bus::Bus;
use sterling_storage::SharedStore;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Longest one check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// An in-band health check: storage can read and write, a dependency is reachable, ...
#[async_trait]
pub trait Checker: Send + Sync + 'static {
    /// Short name, shown when the check fails.
    fn name(&self) -> &str;
    /// Ok when healthy; the reason otherwise.
    async fn check(&self) -> std::result::Result<(), String>;
}

/// The bus accepts work.
pub(crate) struct BusChecker(pub Arc<dyn Bus>);

#[async_trait]
impl Checker for BusChecker {
    fn name(&self) -> &str {
        "bus"
    }
    async fn check(&self) -> std::result::Result<(), String> {
        self.0.check().await.map_err(|e| e.to_string())
    }
}

/// The service's store reads and writes.
pub(crate) struct StoreChecker(pub SharedStore);

#[async_trait]
impl Checker for StoreChecker {
    fn name(&self) -> &str {
        "storage"
    }
    async fn check(&self) -> std::result::Result<(), String> {
        self.0.check().await.map_err(|e| e.to_string())
    }
}

/// The gRPC health service and every name the status is reported under.
type Reporting = (HealthReporter, Vec<String>);

/// The checks of one service and what they last found.
#[derive(Clone)]
pub(crate) struct Health {
    checkers: Arc<Mutex<Vec<Arc<dyn Checker>>>>,
    failures: Arc<Mutex<Vec<String>>>,
    /// The gRPC health service and every name the status is reported under.
    reporter: Arc<Mutex<Option<Reporting>>>,
    /// The status last reported (what `/healthz` answers on HTTP services).
    serving: Arc<std::sync::atomic::AtomicBool>,
}

impl Health {
    /// Checks starting with `first`; not ready until the first round has run.
    pub(crate) fn new(first: Arc<dyn Checker>) -> Self {
        Health {
            checkers: Arc::new(Mutex::new(vec![first])),
            failures: Arc::new(Mutex::new(vec!["not checked yet".into()])),
            reporter: Arc::default(),
            serving: Arc::default(),
        }
    }

    /// Reports to a gRPC health service under `""` and each of `names`.
    pub(crate) fn report_to(&self, reporter: HealthReporter, names: Vec<String>) {
        let names = std::iter::once(String::new()).chain(names).collect();
        *self.reporter.lock().unwrap_or_else(|p| p.into_inner()) = Some((reporter, names));
    }

    /// Adds a check.
    pub(crate) fn add(&self, checker: Arc<dyn Checker>) {
        let mut checkers = self.checkers.lock().unwrap_or_else(|p| p.into_inner());
        if !checkers.iter().any(|c| c.name() == checker.name()) {
            checkers.push(checker);
        }
    }

    /// Why the service is not ready; empty when it is.
    pub(crate) fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs every check once and reports the outcome.
    pub(crate) async fn check_once(&self) {
        let checkers = self
            .checkers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut failures = Vec::new();
        for checker in checkers {
            match tokio::time::timeout(CHECK_TIMEOUT, checker.check()).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => failures.push(format!("{}: {why}", checker.name())),
                Err(_) => failures.push(format!("{}: check timed out", checker.name())),
            }
        }
        let healthy = failures.is_empty();
        let changed = {
            let mut current = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let changed = current.is_empty() != healthy;
            *current = failures.clone();
            changed
        };
        if healthy && changed {
            tracing::info!("ready");
        } else if !healthy {
            tracing::warn!(failures = ?failures, "not ready");
        }
        self.set(if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        })
        .await;
    }

    /// Runs the checks every `interval`, for ever.
    pub(crate) async fn run(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.tick().await;
        loop {
            tick.tick().await;
            self.check_once().await;
        }
    }

    /// Whether the service last reported SERVING.
    pub(crate) fn serving(&self) -> bool {
        self.serving.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Reports `status` under every name.
    pub(crate) async fn set(&self, status: ServingStatus) {
        self.serving.store(
            status == ServingStatus::Serving,
            std::sync::atomic::Ordering::SeqCst,
        );
        let reporter = self
            .reporter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((reporter, names)) = reporter {
            for name in &names {
                reporter.set_service_status(name, status).await;
            }
        }
    }
}
