//! Logging: `tracing` with JSON lines that carry the request id and trace id of the request
//! being served (from the request span the server layer opens).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default; what log pipelines read).
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

impl LogFormat {
    /// From `STERLING_LOG_FORMAT` (`json` or `pretty`).
    pub fn from_env() -> Self {
        match std::env::var("STERLING_LOG_FORMAT").as_deref() {
            Ok("pretty") => LogFormat::Pretty,
            _ => LogFormat::Json,
        }
    }
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("STERLING_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn"))
}

/// Installs the global subscriber writing to stdout; a second call does nothing.
pub fn init(format: LogFormat) {
    init_with_writer(format, std::io::stdout);
}

/// Installs the global subscriber writing to `writer` (tests capture logs this way).
pub fn init_with_writer<W>(format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Installs the Prometheus recorder for the `metrics` the template emits (per-method requests
/// and durations on both sides; retries, hedges, ejections, sheds) and serves `/metrics` on
/// `address`. Returns `None` when a recorder is already installed.
pub fn install_metrics(address: std::net::SocketAddr) -> Option<()> {
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("duration_seconds".into()),
            &buckets,
        )
        .ok()?;
    match builder.install() {
        Ok(()) => {
            tracing::info!(%address, "metrics on /metrics");
            Some(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics not installed");
            None
        }
    }
}

/// Installs the metrics endpoint if `STERLING_METRICS_ADDR` is set (e.g. `127.0.0.1:9464`).
pub fn install_metrics_from_env() {
    if let Some(address) = std::env::var("STERLING_METRICS_ADDR")
        .ok()
        .and_then(|a| a.parse().ok())
    {
        install_metrics(address);
    }
}
