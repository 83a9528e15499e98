//! The request context that follows a request across every hop.
//!
//! The server layer reads the request id, deadline, W3C trace context and hop count from the
//! inbound request and runs the handler inside [`RequestContext::scope`]; the client layer reads
//! [`RequestContext::current`] and writes them onto every outbound call. Handlers never pass
//! them by hand. Work spawned onto other tasks must carry the context explicitly with
//! [`RequestContext::scope`].

use std::future::Future;
use std::time::{Duration, Instant};

use rand::RngCore;

/// Header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Header carrying the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Header counting the service hops a request has made.
pub const HOP_HEADER: &str = "sterling-hop";
/// Header numbering the attempts of one call (1 for the first, 2 for the first retry, ...).
pub const ATTEMPT_HEADER: &str = "sterling-attempt";
/// gRPC's deadline header.
pub const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// What follows a request: id, deadline, trace context and hop count.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request id, from the edge or generated there.
    pub request_id: String,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// The W3C trace context of this hop.
    pub trace: TraceContext,
    /// How many service hops led here (0 at the edge).
    pub hop: u32,
    /// Which attempt of the caller's call this request is (1 for the first). A request that is
    /// itself a retry makes no retries of its own, so retries never multiply across hops.
    pub attempt: u32,
}

impl RequestContext {
    /// A fresh context for a request entering the platform.
    pub fn new_root(request_id: Option<String>, deadline: Option<Duration>) -> Self {
        RequestContext {
            request_id: request_id
                .filter(|id| valid_request_id(id))
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            deadline: deadline.map(|d| Instant::now() + d),
            trace: TraceContext::new_root(),
            hop: 0,
            attempt: 1,
        }
    }

    /// The context of the request being handled, if any.
    pub fn current() -> Option<RequestContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The current request id, or "-" outside a request.
    pub fn current_request_id() -> String {
        CURRENT
            .try_with(|c| c.request_id.clone())
            .unwrap_or_else(|_| "-".to_string())
    }

    /// Runs `future` with this context as the current one.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// Time left before the deadline (zero once passed), or `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Whether a caller-supplied request id is acceptable (printable, bounded).
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// A W3C trace context (`traceparent`): trace id, this hop's span id, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, hex.
    pub trace_id: String,
    /// 8 bytes, hex: the span of the current hop.
    pub span_id: String,
    /// Whether the trace is sampled.
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        let mut trace = [0u8; 16];
        rng.fill_bytes(&mut trace);
        TraceContext {
            trace_id: hex(&trace),
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// Parses a `traceparent` header (version 00).
    pub fn parse(header: &str) -> Option<Self> {
        let parts: Vec<&str> = header.trim().split('-').collect();
        let [version, trace_id, span_id, flags] = parts.as_slice() else {
            return None;
        };
        let is_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if *version != "00"
            || !is_hex(trace_id, 32)
            || !is_hex(span_id, 16)
            || !is_hex(flags, 2)
            || trace_id.bytes().all(|b| b == b'0')
            || span_id.bytes().all(|b| b == b'0')
        {
            return None;
        }
        Some(TraceContext {
            trace_id: trace_id.to_ascii_lowercase(),
            span_id: span_id.to_ascii_lowercase(),
            sampled: u8::from_str_radix(flags, 16).ok()? & 1 == 1,
        })
    }

    /// A child span in the same trace.
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id.clone(),
            span_id: new_span_id(),
            sampled: self.sampled,
        }
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            self.span_id,
            if self.sampled { "01" } else { "00" }
        )
    }
}

fn new_span_id() -> String {
    let mut span = [0u8; 8];
    rand::rng().fill_bytes(&mut span);
    hex(&span)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Parses gRPC's `grpc-timeout` header (`100m`, `5S`, `250000u`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() || value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value (microseconds, at most 8 digits).
pub fn format_grpc_timeout(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 100_000_000 {
        format!("{micros}u")
    } else {
        format!("{}m", (d.as_millis()).min(99_999_999))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let t = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&t.header()), Some(t.clone()));
        assert_eq!(t.child().trace_id, t.trace_id);
        assert_ne!(t.child().span_id, t.span_id);
        assert!(TraceContext::parse("garbage").is_none());
        assert!(
            TraceContext::parse("00-00000000000000000000000000000000-0000000000000001-01")
                .is_none()
        );
    }

    #[test]
    fn grpc_timeout_round_trips() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(
            parse_grpc_timeout("30000u"),
            Some(Duration::from_millis(30))
        );
        assert_eq!(parse_grpc_timeout("5x"), None);
        let d = Duration::from_micros(29_999);
        assert_eq!(parse_grpc_timeout(&format_grpc_timeout(d)), Some(d));
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(valid_request_id("req-123_a.b"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("has space"));
        let ctx = RequestContext::new_root(Some("bad id\n".into()), None);
        assert_ne!(ctx.request_id, "bad id\n");
    }

    #[tokio::test]
    async fn the_context_is_visible_inside_its_scope_only() {
        assert!(RequestContext::current().is_none());
        let ctx = RequestContext::new_root(Some("r1".into()), None);
        ctx.scope(async {
            assert_eq!(RequestContext::current_request_id(), "r1");
        })
        .await;
        assert_eq!(RequestContext::current_request_id(), "-");
    }
}
