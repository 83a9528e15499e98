//! What a client may do with each method: retry it, hedge it, or neither.

use std::time::Duration;

/// How a method may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// Changes nothing: retried on retryable errors and hedged.
    Read,
    /// Changes state, keyed by an id the caller supplies: retried, never hedged.
    IdempotentWrite,
    /// Changes state with nothing to make a repeat harmless: never retried or hedged (unless
    /// the call carries an `idempotency-key` header).
    Write,
    /// A server stream: passed through as it is.
    Streaming,
}

impl MethodKind {
    /// Whether a failed attempt may be sent again.
    pub fn retryable(self) -> bool {
        matches!(self, MethodKind::Read | MethodKind::IdempotentWrite)
    }
}

/// Mutations of the platform's contracts that are idempotent on a caller-supplied id.
const IDEMPOTENT_WRITES: &[&str] = &[
    "/sterling.cards.v1.Cards/IssueCard",
    "/sterling.cards.v1.Cards/FreezeCard",
    "/sterling.cards.v1.Cards/UnfreezeCard",
    "/sterling.ledger.v1.Ledger/CreateAccount",
    "/sterling.ledger.v1.Ledger/Transfer",
    "/sterling.ledger.v1.Ledger/PlaceHold",
    "/sterling.ledger.v1.Ledger/ReleaseHold",
    "/sterling.transactions.v1.Transactions/RecordPending",
    "/sterling.transactions.v1.Transactions/ReleaseTransaction",
    "/sterling.cardprocessing.v1.CardProcessing/Authorise",
];

/// Reads whose names do not say so.
const READS: &[&str] = &["/sterling.fx.v1.Fx/Convert", "/grpc.health.v1.Health/Check"];

/// Server streams.
const STREAMS: &[&str] = &["/grpc.health.v1.Health/Watch"];

/// The kind of a method from its path (`/package.Service/Method`): the tables above, then the
/// method's name (`Get*`, `List*`, `Read*` are reads; `Follow*`, `Watch*`, `Stream*` streams);
/// anything else is a plain write.
pub fn kind_of(path: &str) -> MethodKind {
    if IDEMPOTENT_WRITES.contains(&path) {
        return MethodKind::IdempotentWrite;
    }
    if READS.contains(&path) {
        return MethodKind::Read;
    }
    if STREAMS.contains(&path) {
        return MethodKind::Streaming;
    }
    let method = path.rsplit('/').next().unwrap_or_default();
    if ["Get", "List", "Read"]
        .iter()
        .any(|p| method.starts_with(p))
    {
        MethodKind::Read
    } else if ["Follow", "Watch", "Stream"]
        .iter()
        .any(|p| method.starts_with(p))
    {
        MethodKind::Streaming
    } else {
        MethodKind::Write
    }
}

/// Knobs of the resilient client.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    /// Timeout of a call made outside any request, and the cap on every call's timeout.
    pub timeout_cap: Duration,
    /// Most attempts of one call (the first included).
    pub max_attempts: u32,
    /// First retry backoff; doubles per attempt, with full jitter.
    pub backoff_base: Duration,
    /// Largest retry backoff.
    pub backoff_max: Duration,
    /// Retries may add at most this fraction of calls (plus `retry_min_per_second`).
    pub retry_ratio: f32,
    /// Retries always allowed per second regardless of traffic.
    pub retry_min_per_second: u32,
    /// Hedge reads slower than this percentile of the last 512 successful reads' latencies.
    pub hedge_percentile: f32,
    /// Latency samples needed before hedging starts.
    pub hedge_min_samples: u64,

    /// Consecutive failures that eject an endpoint.
    pub eject_after_failures: u32,
    /// First ejection time; grows with each ejection of the same endpoint, up to 30 s.
    pub eject_base: Duration,
    /// At most this share of endpoints is ejected at once.
    pub max_ejected_fraction: f32,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        ClientPolicy {
            timeout_cap: Duration::from_secs(2),
            max_attempts: 3,
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_millis(200),
            retry_ratio: 0.2,
            retry_min_per_second: 10,
            hedge_percentile: 0.95,
            hedge_min_samples: 20,

            eject_after_failures: 5,
            eject_base: Duration::from_secs(1),
            max_ejected_fraction: 0.5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_tables_then_the_names() {
        assert_eq!(
            kind_of("/sterling.ledger.v1.Ledger/PlaceHold"),
            MethodKind::IdempotentWrite
        );
        assert_eq!(
            kind_of("/sterling.cards.v1.Cards/GetCard"),
            MethodKind::Read
        );
        assert_eq!(kind_of("/sterling.fx.v1.Fx/Convert"), MethodKind::Read);
        assert_eq!(
            kind_of("/sterling.feed.v1.Feed/FollowFeed"),
            MethodKind::Streaming
        );
        assert_eq!(
            kind_of("/sterling.testing.v1.Probe/Write"),
            MethodKind::Write
        );
        assert!(!MethodKind::Write.retryable());
    }
}
