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
