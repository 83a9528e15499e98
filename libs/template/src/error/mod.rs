//! The one error type of the platform.
//!
//! An [`Error`] has a stable dotted code (`not_found.card`, `precondition_failed.card_frozen`)
//! whose first segment is its [`ErrorClass`], a message, parameters, a retryable flag, an
//! *unexpected* flag (a bug or broken dependency, not a caller's mistake: logged at ERROR and
//! paged on) and, when it wraps another error, that cause ([`std::error::Error::source`]). It
//! crosses gRPC as a status whose code follows the class plus metadata carrying the exact code,
//! and it leaves the edge as `application/problem+json`.

mod class;
mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use self::class::ErrorClass;
pub use self::wire::{ERROR_CODE_HEADER, ERROR_PARAMS_HEADER, ERROR_RETRYABLE_HEADER};

/// The cause an error wraps.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// A platform error with a stable dotted code.
#[derive(Debug, Clone)]
pub struct Error {
    code: String,
    message: String,
    params: BTreeMap<String, String>,
    retryable: bool,
    unexpected: bool,
    source: Option<Cause>,
}

/// Two errors are equal when they say the same on the wire (code, message, params,
/// retryable); their causes and the unexpected flag stay in this process.
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code
            && self.message == other.message
            && self.params == other.params
            && self.retryable == other.retryable
    }
}

impl Eq for Error {}

/// Result with the platform error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a dotted code whose first segment is its class, e.g. `not_found.card`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        let class = ErrorClass::of(&code);
        Error {
            code,
            message: message.into(),
            params: BTreeMap::new(),
            retryable: class.retryable(),
            unexpected: class == ErrorClass::Internal,
            source: None,
        }
    }

    /// An error of `class` with an optional detail segment (`""` for none).
    pub fn of(class: ErrorClass, detail: &str, message: impl Into<String>) -> Self {
        Self::new(dotted(class.as_str(), detail), message)
    }

    /// `bad_request[.detail]`: the caller sent something invalid.
    pub fn bad_request(detail: &str, message: impl Into<String>) -> Self {
        Self::of(ErrorClass::BadRequest, detail, message)
    }
    /// `not_found[.what]`.
    pub fn not_found(what: &str, message: impl Into<String>) -> Self {
        Self::of(ErrorClass::NotFound, what, message)
    }
    /// `precondition_failed[.why]`: valid request, but the state forbids it.
    pub fn precondition_failed(why: &str, message: impl Into<String>) -> Self {
        Self::of(ErrorClass::PreconditionFailed, why, message)
    }
    /// `conflict[.what]`: clashes with what is stored (e.g. an id reused for other content).
    pub fn conflict(what: &str, message: impl Into<String>) -> Self {
        Self::of(ErrorClass::Conflict, what, message)
    }
    /// `unauthorized[.why]`: the caller could not be identified.
    pub fn unauthorized(why: &str, message: impl Into<String>) -> Self {
        Self::of(ErrorClass::Unauthorized, why, message)
    }
    /// `forbidden[.why]`.
    pub fn forbidden(why: &str, message: impl Into<String>) -> Self {
        Self::of(ErrorClass::Forbidden, why, message)
    }
    /// `rate_limited`.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::of(ErrorClass::RateLimited, "", message)
    }
    /// `timeout`: the deadline passed.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::of(ErrorClass::Timeout, "", message)
    }
    /// `unavailable[.what]`: a dependency cannot be reached; retryable.
    pub fn unavailable(what: &str, message: impl Into<String>) -> Self {
        Self::of(ErrorClass::Unavailable, what, message)
    }
    /// `internal`: a bug or an unexpected state.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::of(ErrorClass::Internal, "", message)
    }

    /// Adds a parameter, e.g. `.with_param("card_token", token)`.
    pub fn with_param(mut self, key: &str, value: impl ToString) -> Self {
        self.params.insert(key.to_string(), value.to_string());
        self
    }

    /// Overrides whether the call may be retried.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Keeps the error this one was made from; it stays in this process (logs show it).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Marks the error unexpected (a bug or a broken dependency) or expected.
    pub fn with_unexpected(mut self, unexpected: bool) -> Self {
        self.unexpected = unexpected;
        self
    }

    /// The stable dotted code.
    pub fn code(&self) -> &str {
        &self.code
    }
    /// The class: [`ErrorClass::NotFound`] for `not_found.card`.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::of(&self.code)
    }
    /// The human message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The parameters.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.params
    }
    /// Whether retrying may succeed.
    pub fn retryable(&self) -> bool {
        self.retryable
    }
    /// Whether this is a bug or a broken dependency rather than a caller's mistake or a state
    /// the caller can see (`internal` errors are, by default).
    pub fn unexpected(&self) -> bool {
        self.unexpected
    }

    /// The HTTP status for this error at the edge.
    pub fn http_status(&self) -> http::StatusCode {
        self.class().http_status()
    }

    /// The RFC 9457 problem document for this error.
    pub fn problem_json(&self, request_id: &str) -> serde_json::Value {
        serde_json::json!({
            "type": format!("https://errors.sterling.dev/{}", self.code),
            "title": self.code,
            "status": self.http_status().as_u16(),
            "detail": self.message,
            "code": self.code,
            "params": self.params,
            "retryable": self.retryable,
            "request_id": request_id,
        })
    }
}

/// Longest id a request may carry.
pub const MAX_ID_LEN: usize = 128;

/// A required text field of a request: present and at most [`MAX_ID_LEN`] bytes, or
/// `bad_request.<field>`.
pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    required_max(field, value, MAX_ID_LEN)
}

/// A required text field of at most `max` bytes, or `bad_request.<field>`.
pub fn required_max<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str> {
    if value.is_empty() || value.len() > max {
        Err(
            Error::bad_request(field, format!("{field} is required (at most {max} bytes)"))
                .with_param("field", field),
        )
    } else {
        Ok(value)
    }
}

/// A caller's key or id from the public API: 1 to [`MAX_ID_LEN`] printable ASCII characters
/// without spaces (`!` to `~`), or `bad_request.<field>`.
pub fn printable_key<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    let value = required(field, value)?;
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::bad_request(
            field,
            format!("{field} is printable ASCII without spaces"),
        )
        .with_param("field", field));
    }
    Ok(value)
}

fn dotted(class: &str, detail: &str) -> String {
    if detail.is_empty() {
        class.to_string()
    } else {
        format!("{class}.{detail}")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exact_code_and_params_cross_grpc() {
        let original = Error::precondition_failed("card_frozen", "card is frozen")
            .with_param("card_token", "card_123");
        let status: tonic::Status = original.clone().into();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let back = Error::from(status);
        assert_eq!(back, original);
        assert_eq!(back.code(), "precondition_failed.card_frozen");
        assert!(!back.retryable());
    }

    #[test]
    fn the_cause_stays_and_classes_are_typed() {
        use std::error::Error as _;
        let stored = sterling_storage::StorageError::Decode("bad column".into());
        let e = Error::from(stored);
        assert_eq!(e.class(), ErrorClass::Internal);
        assert!(e.unexpected());
        assert!(e.source().unwrap().to_string().contains("bad column"));
        let e = Error::not_found("card", "no card");
        assert_eq!(e.class(), ErrorClass::NotFound);
        assert!(!e.unexpected());
        assert!(e.source().is_none());
        for class in ErrorClass::ALL {
            assert_eq!(ErrorClass::of(class.as_str()), class);
            assert_eq!(ErrorClass::from_grpc(class.grpc_code()), class);
        }
    }

    #[test]
    fn a_plain_status_maps_to_a_class() {
        let e = Error::from(tonic::Status::unavailable("down"));
        assert_eq!(e.code(), "unavailable");
        assert!(e.retryable());
        assert_eq!(
            Error::from(tonic::Status::not_found("x")).code(),
            "not_found"
        );
    }

    #[test]
    fn problem_json_carries_code_status_and_request_id() {
        let e = Error::bad_request("amount", "amount must be positive");
        let p = e.problem_json("req-1");
        assert_eq!(p["status"], 400);
        assert_eq!(p["code"], "bad_request.amount");
        assert_eq!(p["request_id"], "req-1");
    }
}
