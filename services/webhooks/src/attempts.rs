//! The attempts of each delivery, a row of their own per attempt number
//! (`webhook_delivery_attempts`), and where a delivery stands: its row (written once, with the
//! status and count of any attempts made before attempts had rows; later only postponed past
//! an open circuit, or finished: its body dropped and how it ended written on it) folded with
//! its attempts.
//! Nothing here is a compare-and-set: an attempt's row says what that attempt came to, and two
//! instances making the same attempt write the same row.

use sterling_storage::{Mutation, Query, Row, SharedStore, Value, now_millis};
use sterling_template::Result;

use crate::dispatch::DeliveryRecord;

/// The attempts table.
pub const ATTEMPTS: &str = "webhook_delivery_attempts";

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took it.
    Delivered,
    /// It failed; the next attempt is due at this time (ms).
    Retrying(i64),
    /// It failed for good.
    Failed,
}

/// What an attempt's row records besides its outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The receiver's HTTP status (0: none).
    pub status_code: i64,
    /// How long the attempt took.
    pub latency_ms: i64,
    /// Why it failed (empty when delivered).
    pub error: String,
}

/// The row of attempt `attempt` of the delivery of `event_id` to `webhook_id`.
pub fn attempt_row(
    (webhook_id, event_id): (&str, &str),
    attempt: i64,
    outcome: Outcome,
    answer: &Answer,
) -> Mutation {
    let (status, next) = match outcome {
        Outcome::Delivered => ("delivered", Value::Null),
        Outcome::Retrying(at) => ("retrying", Value::Timestamp(at)),
        Outcome::Failed => ("failed", Value::Null),
    };
    let row = Row::new()
        .with("webhook_id", webhook_id)
        .with("event_id", event_id)
        .with("attempt", attempt)
        .with("status", status)
        .with("status_code", answer.status_code)
        .with("latency_ms", answer.latency_ms)
        .with("error", answer.error.as_str())
        .with("next_attempt_at", next)
        .with("at", Value::Timestamp(now_millis()));
    Mutation::insert(ATTEMPTS, row)
}

/// What a finished delivery's own row says once attempt `attempt` finished it (`outcome`
/// delivered or failed), its body dropped. Written with the attempt's row: where two
/// instances made one attempt at once and one of them failed and will retry, its attempt row
/// may overwrite the one that finished, but nothing writes a delivery's row back to pending,
/// so the delivery stays finished (and its queued retry finds it so and drops it).
pub fn finished_row(attempt: i64, outcome: Outcome, answer: &Answer) -> Row {
    let (status, delivered_at) = match outcome {
        Outcome::Delivered => ("delivered", Value::Timestamp(now_millis())),
        Outcome::Retrying(_) | Outcome::Failed => ("failed", Value::Null),
    };
    Row::new()
        .with("body", Value::Null)
        .with("status", status)
        .with("attempts", attempt)
        .with("last_status_code", answer.status_code)
        .with("last_latency_ms", answer.latency_ms)
        .with("last_error", answer.error.as_str())
        .with("delivered_at", delivered_at)
}

/// The write that postpones a pending delivery past an open circuit to `at`, where the log
/// reads its next attempt: its last attempt's row, or its own row before any attempt of its
/// own (`own_attempts`: the attempts its row counts, from before attempts had rows).
pub fn postponement(
    (webhook_id, event_id): (&str, &str),
    delivery_key: Row,
    (attempts, own_attempts): (u32, u32),
    at: i64,
) -> Mutation {
    let next = Row::new().with("next_attempt_at", Value::Timestamp(at));
    if attempts > own_attempts {
        let key = Row::new()
            .with("webhook_id", webhook_id)
            .with("event_id", event_id)
            .with("attempt", i64::from(attempts));
        Mutation::update(ATTEMPTS, key, next, vec![])
    } else {
        Mutation::update(
            crate::dispatch::DELIVERIES.table,
            delivery_key,
            next,
            vec![],
        )
    }
}

/// The attempt rows of one delivery, in attempt order.
pub async fn attempts_of(
    store: &SharedStore,
    webhook_id: &str,
    event_id: &str,
) -> Result<Vec<Row>> {
    let partition = Row::new()
        .with("webhook_id", webhook_id)
        .with("event_id", event_id);
    Ok(store.query(Query::partition(ATTEMPTS, partition)).await?)
}

/// Where the delivery of `delivery` (its row in the log) stands after `attempts` (its attempt
/// rows, in order): the row's own status and count (a finished delivery's row says how it
/// finished), then every attempt numbered after them.
pub fn standing(webhook_id: &str, delivery: &Row, attempts: &[Row]) -> Result<DeliveryRecord> {
    let mut record = DeliveryRecord {
        webhook_id: webhook_id.to_string(),
        event_id: delivery.text("event_id")?.to_string(),
        event_type: delivery.text("event_type").unwrap_or_default().to_string(),
        status: delivery.text("status").unwrap_or("pending").to_string(),
        attempts: delivery.i64("attempts").unwrap_or_default() as u32,
        last_status_code: delivery.i64("last_status_code").unwrap_or_default() as u32,
        last_latency_ms: delivery.i64("last_latency_ms").unwrap_or_default() as u32,
        last_error: delivery.text("last_error").unwrap_or_default().to_string(),
        next_attempt_at_ms: delivery.timestamp("next_attempt_at").unwrap_or_default(),
        delivered_at_ms: delivery.timestamp("delivered_at").unwrap_or_default(),
    };
    if record.status != "pending" {
        // Finished before attempts had rows of their own.
        return Ok(record);
    }
    for row in attempts {
        let attempt = row.i64("attempt")?;
        if attempt <= i64::from(record.attempts) {
            continue;
        }
        record.attempts = attempt as u32;
        record.last_status_code = row.i64("status_code").unwrap_or_default() as u32;
        record.last_latency_ms = row.i64("latency_ms").unwrap_or_default() as u32;
        record.last_error = row.text("error").unwrap_or_default().to_string();
        record.next_attempt_at_ms = row.timestamp("next_attempt_at").unwrap_or_default();
        record.status = match row.text("status")? {
            "retrying" => "pending",
            "delivered" => {
                record.delivered_at_ms = row.timestamp("at").unwrap_or_default();
                "delivered"
            }
            _ => "failed",
        }
        .to_string();
        if record.status != "pending" {
            break;
        }
    }
    Ok(record)
}
