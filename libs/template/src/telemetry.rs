//! Logging and tracing: `tracing` with JSON lines that carry the request id and trace id of the
//! request being served (from the request span the server layer opens), and OpenTelemetry spans
//! exported over OTLP, joined into one trace per payment across hops and events.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::context::{RequestContext, TraceContext};

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

static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber writing to stdout, exporting spans over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g. `http://127.0.0.1:4317`, a Jaeger or collector);
/// a second call does nothing.
pub fn init(format: LogFormat) {
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .and_then(|endpoint| {
            match opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
            {
                Ok(exporter) => Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(
                            opentelemetry_sdk::Resource::builder()
                                .with_service_name("sterling")
                                .build(),
                        )
                        .build(),
                ),
                Err(e) => {
                    eprintln!("OTLP exporter not started: {e}");
                    None
                }
            }
        });
    init_with(format, std::io::stdout, provider);
}

/// Installs the global subscriber writing to `writer` (tests capture logs this way).
pub fn init_with_writer<W>(format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    init_with(format, writer, None);
}

/// Installs the global subscriber writing to `writer` and, with `provider`, exporting every
/// span to OpenTelemetry: the spans of one payment, synchronous hops and events alike, form
/// one trace.
pub fn init_with<W>(format: LogFormat, writer: W, provider: Option<SdkTracerProvider>)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(writer)
            .boxed(),
    };
    let traces = provider.map(|provider| {
        let tracer = provider.tracer("sterling");
        let _ = TRACER_PROVIDER.set(provider);
        tracing_opentelemetry::layer().with_tracer(tracer)
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .with(filter())
        .try_init();
}

/// Exports the spans still buffered (at shutdown).
pub fn flush() {
    if let Some(provider) = TRACER_PROVIDER.get() {
        let _ = provider.force_flush();
    }
}

/// Makes `span` the span of this hop in the trace: its OpenTelemetry parent is the caller's
/// span (`parent`, from `traceparent`), and the context's span id becomes the span's own, so
/// that what this hop calls or publishes hangs under it. Without an exporter it leaves the
/// context as it is.
pub fn join_trace(
    span: &tracing::Span,
    parent: Option<&TraceContext>,
    context: &mut RequestContext,
) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if TRACER_PROVIDER.get().is_none() {
        return;
    }
    let trace_id = TraceId::from_hex(&context.trace.trace_id).unwrap_or(TraceId::INVALID);
    if let Some(parent) = parent
        && let Ok(span_id) = SpanId::from_hex(&parent.span_id)
    {
        let remote = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let own = span.context().span().span_context().clone();
    if own.is_valid() {
        context.trace.trace_id = own.trace_id().to_string();
        context.trace.span_id = own.span_id().to_string();
    }
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
