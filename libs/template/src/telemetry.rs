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

pub use crate::platform::config::LogFormat;

/// The filter used when none is configured.
pub const DEFAULT_FILTER: &str = "info,h2=warn,hyper=warn,tower=warn";

fn filter(directives: &str) -> EnvFilter {
    EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber for a process of several services (`sterling up`): spans
/// carry `service.name` `sterling`. See [`init_for`].
pub fn init(format: LogFormat, directives: &str) {
    init_for("sterling", format, directives);
}

/// Installs the global subscriber writing to stdout with `directives` as the log filter,
/// exporting spans over OTLP under `service.name` = `service` when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g. `http://127.0.0.1:4317`, a Jaeger or collector).
/// Call it inside the Tokio runtime (the exporter spawns its tasks there); a second call does
/// nothing.
pub fn init_for(service: &str, format: LogFormat, directives: &str) {
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|endpoint| !endpoint.is_empty())
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
                                .with_service_name(service.to_string())
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
    init_with(format, directives, std::io::stdout, provider);
}

/// Installs the global subscriber writing to `writer` (tests capture logs this way).
pub fn init_with_writer<W>(format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    init_with(format, DEFAULT_FILTER, writer, None);
}

/// Installs the global subscriber writing to `writer` and, with `provider`, exporting every
/// span to OpenTelemetry: the spans of one payment, synchronous hops and events alike, form
/// one trace.
pub fn init_with<W>(
    format: LogFormat,
    directives: &str,
    writer: W,
    provider: Option<SdkTracerProvider>,
) where
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
        .with(filter(directives))
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

/// The trace context naming `span` (a client or producer span under the current one) as the
/// parent of what it calls or publishes, in the trace of `current`; `None` without an
/// exporter (then `current` itself is the parent).
pub fn span_trace(span: &tracing::Span, current: &TraceContext) -> Option<TraceContext> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    TRACER_PROVIDER.get()?;
    let own = span.context().span().span_context().clone();
    own.is_valid().then(|| TraceContext {
        trace_id: own.trace_id().to_string(),
        span_id: own.span_id().to_string(),
        sampled: current.sampled,
    })
}

/// Help text of every series the template emits.
const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        "sterling_server_requests_total",
        "Requests served, by service, protocol, method and outcome (gRPC code or HTTP status).",
    ),
    (
        "sterling_server_request_duration_seconds",
        "Time to answer a request, by service, protocol and method.",
    ),
    (
        "sterling_server_shed_total",
        "Requests refused at once because too many were in flight.",
    ),
    (
        "sterling_server_expired_total",
        "Requests refused at once because their deadline had passed.",
    ),
    (
        "sterling_server_panics_total",
        "Handlers that panicked (answered internal).",
    ),
    (
        "sterling_client_requests_total",
        "Calls made, by caller, callee service, method and gRPC code.",
    ),
    (
        "sterling_client_request_duration_seconds",
        "Time a call took, retries and hedges included, by caller, service and method.",
    ),
    (
        "sterling_client_retries_total",
        "Attempts sent again after a retryable failure.",
    ),
    (
        "sterling_client_retry_budget_exhausted_total",
        "Retries not sent because the retry budget was spent.",
    ),
    (
        "sterling_client_hedges_total",
        "Reads sent a second time because the first was slow.",
    ),
    (
        "sterling_client_ejections_total",
        "Endpoints ejected after consecutive failures.",
    ),
    (
        "sterling_consumer_events_total",
        "Events delivered to a consumer, by outcome (handled, duplicate, rejected, failed).",
    ),
    (
        "sterling_consumer_redelivered_total",
        "Deliveries that were not the event's first.",
    ),
    (
        "sterling_consumer_retried_in_hand_total",
        "Handler runs again while the delivery stays in hand, after a dependency failed for a passing reason (unavailable, timeout, rate limited): an outage waited out without spending deliveries.",
    ),
    (
        "sterling_consumer_lag_seconds",
        "Time from an event occurring to its delivery to the consumer.",
    ),
    (
        "sterling_consumer_backlog_events",
        "Events a consumer has not acked yet (waiting or in hand), sampled every second; a backlog that keeps growing is a consumer that does not keep up.",
    ),
    (
        "sterling_consumer_dead_lettered_total",
        "Events a consumer gave up on (rejected, or failed at their last delivery): dead letters.",
    ),
    (
        "sterling_card_authorisations_total",
        "Card authorisations decided, by decision (approved, declined), reason, and whether the acceptance runner made them (acceptance=\"true\"; leave them out of business figures).",
    ),
];

/// Gives every series the template emits its help text (`# HELP` in Prometheus); call after
/// installing a recorder.
pub fn describe_metrics() {
    for (name, help) in DESCRIPTIONS {
        if name.ends_with("_seconds") {
            metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help);
        } else {
            metrics::describe_counter!(*name, *help);
        }
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
            describe_metrics();
            tracing::info!(%address, "metrics on /metrics");
            Some(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics not installed");
            None
        }
    }
}
