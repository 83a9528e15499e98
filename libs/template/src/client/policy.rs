//! What a client may do with each method: retry it, hedge it, or neither.

use std::collections::HashMap;
use std::sync::LazyLock;
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

/// The kind of every method of the platform's contracts, read once from the descriptor set
/// Sterling embeds: a contract declares it with protobuf's standard method option,
/// `option idempotency_level = NO_SIDE_EFFECTS;` (a read) or `IDEMPOTENT;` (a write keyed by
/// an id the caller supplies); server streams are streams whatever they declare.
static KINDS: LazyLock<HashMap<String, MethodKind>> = LazyLock::new(|| {
    let mut kinds = kinds_from(sterling_proto::FILE_DESCRIPTOR_SET);
    kinds.extend(kinds_from(tonic_health::pb::FILE_DESCRIPTOR_SET));
    // The standard health service declares nothing; a check changes nothing.
    kinds.insert("/grpc.health.v1.Health/Check".into(), MethodKind::Read);
    kinds
});

/// The kinds declared in an encoded `FileDescriptorSet`, by path (`/package.Service/Method`).
pub fn kinds_from(encoded: &[u8]) -> HashMap<String, MethodKind> {
    use prost::Message;
    use prost_types::method_options::IdempotencyLevel;
    let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
        return HashMap::new();
    };
    let mut kinds = HashMap::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                let level = method
                    .options
                    .as_ref()
                    .map(|o| o.idempotency_level())
                    .unwrap_or(IdempotencyLevel::IdempotencyUnknown);
                let kind = if method.server_streaming() {
                    MethodKind::Streaming
                } else {
                    match level {
                        IdempotencyLevel::NoSideEffects => MethodKind::Read,
                        IdempotencyLevel::Idempotent => MethodKind::IdempotentWrite,
                        IdempotencyLevel::IdempotencyUnknown => MethodKind::Write,
                    }
                };
                kinds.insert(path, kind);
            }
        }
    }
    kinds
}

/// The kind of a method from its path (`/package.Service/Method`), as its contract declares
/// it; a method no contract declares is a plain write (never repeated).
pub fn kind_of(path: &str) -> MethodKind {
    KINDS.get(path).copied().unwrap_or(MethodKind::Write)
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
    fn kinds_come_from_the_contracts() {
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
        assert_eq!(kind_of("/sterling.testing.v1.Probe/Read"), MethodKind::Read);
        assert_eq!(
            kind_of("/grpc.health.v1.Health/Watch"),
            MethodKind::Streaming
        );
        assert_eq!(
            kind_of("/sterling.nothing.v1.X/GetThing"),
            MethodKind::Write
        );
        assert!(!MethodKind::Write.retryable());
    }
}
