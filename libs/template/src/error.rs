//! The one error type of the platform.
//!
//! An [`Error`] has a stable dotted code (`not_found.card`, `precondition_failed.card_frozen`),
//! a message, parameters and a retryable flag. It crosses gRPC as a status whose code follows
//! the error's class plus metadata carrying the exact code, and it leaves the edge as
//! `application/problem+json`.

use std::collections::BTreeMap;
use std::fmt;

use tonic::metadata::MetadataValue;

/// Metadata key carrying the stable error code.
pub const ERROR_CODE_HEADER: &str = "sterling-error-code";
/// Metadata key carrying the error parameters as JSON.
pub const ERROR_PARAMS_HEADER: &str = "sterling-error-params";
/// Metadata key saying whether the call may be retried.
pub const ERROR_RETRYABLE_HEADER: &str = "sterling-error-retryable";

/// A platform error with a stable dotted code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: String,
    message: String,
    params: BTreeMap<String, String>,
    retryable: bool,
}

/// Result with the platform error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a dotted code whose first segment is its class, e.g. `not_found.card`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        let retryable = matches!(class_of(&code), "unavailable" | "timeout" | "rate_limited");
        Error {
            code,
            message: message.into(),
            params: BTreeMap::new(),
            retryable,
        }
    }

    /// `bad_request[.detail]`: the caller sent something invalid.
    pub fn bad_request(detail: &str, message: impl Into<String>) -> Self {
        Self::new(dotted("bad_request", detail), message)
    }
    /// `not_found[.what]`.
    pub fn not_found(what: &str, message: impl Into<String>) -> Self {
        Self::new(dotted("not_found", what), message)
    }
    /// `precondition_failed[.why]`: valid request, but the state forbids it.
    pub fn precondition_failed(why: &str, message: impl Into<String>) -> Self {
        Self::new(dotted("precondition_failed", why), message)
    }
    /// `conflict[.what]`: clashes with what is stored (e.g. an id reused for other content).
    pub fn conflict(what: &str, message: impl Into<String>) -> Self {
        Self::new(dotted("conflict", what), message)
    }
    /// `unauthorized[.why]`: the caller could not be identified.
    pub fn unauthorized(why: &str, message: impl Into<String>) -> Self {
        Self::new(dotted("unauthorized", why), message)
    }
    /// `forbidden[.why]`.
    pub fn forbidden(why: &str, message: impl Into<String>) -> Self {
        Self::new(dotted("forbidden", why), message)
    }
    /// `rate_limited`.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new("rate_limited", message)
    }
    /// `timeout`: the deadline passed.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new("timeout", message)
    }
    /// `unavailable[.what]`: a dependency cannot be reached; retryable.
    pub fn unavailable(what: &str, message: impl Into<String>) -> Self {
        Self::new(dotted("unavailable", what), message)
    }
    /// `internal`: a bug or an unexpected state.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("internal", message)
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

    /// The stable dotted code.
    pub fn code(&self) -> &str {
        &self.code
    }
    /// The first segment of the code: `not_found` for `not_found.card`.
    pub fn class(&self) -> &str {
        class_of(&self.code)
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

    /// The HTTP status for this error at the edge.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self.class() {
            "bad_request" => S::BAD_REQUEST,
            "unauthorized" => S::UNAUTHORIZED,
            "forbidden" => S::FORBIDDEN,
            "not_found" => S::NOT_FOUND,
            "conflict" => S::CONFLICT,
            "precondition_failed" => S::UNPROCESSABLE_ENTITY,
            "rate_limited" => S::TOO_MANY_REQUESTS,
            "timeout" => S::GATEWAY_TIMEOUT,
            "unavailable" => S::SERVICE_UNAVAILABLE,
            _ => S::INTERNAL_SERVER_ERROR,
        }
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

fn dotted(class: &str, detail: &str) -> String {
    if detail.is_empty() {
        class.to_string()
    } else {
        format!("{class}.{detail}")
    }
}

fn class_of(code: &str) -> &str {
    code.split('.').next().unwrap_or(code)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let code = match e.class() {
            "bad_request" => Code::InvalidArgument,
            "not_found" => Code::NotFound,
            "precondition_failed" => Code::FailedPrecondition,
            "conflict" => Code::AlreadyExists,
            "unauthorized" => Code::Unauthenticated,
            "forbidden" => Code::PermissionDenied,
            "rate_limited" => Code::ResourceExhausted,
            "timeout" => Code::DeadlineExceeded,
            "unavailable" => Code::Unavailable,
            _ => Code::Internal,
        };
        let mut status = tonic::Status::new(code, e.message.clone());
        let md = status.metadata_mut();
        if let Ok(v) = MetadataValue::try_from(e.code.as_str()) {
            md.insert(ERROR_CODE_HEADER, v);
        }
        if !e.params.is_empty()
            && let Ok(json) = serde_json::to_string(&e.params)
            && let Ok(v) = MetadataValue::try_from(json.as_str())
        {
            md.insert(ERROR_PARAMS_HEADER, v);
        }
        md.insert(
            ERROR_RETRYABLE_HEADER,
            MetadataValue::from_static(if e.retryable { "true" } else { "false" }),
        );
        status
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let md = status.metadata();
        let header = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let code = header(ERROR_CODE_HEADER).unwrap_or_else(|| {
            match status.code() {
                Code::InvalidArgument | Code::OutOfRange => "bad_request",
                Code::NotFound => "not_found",
                Code::FailedPrecondition => "precondition_failed",
                Code::AlreadyExists | Code::Aborted => "conflict",
                Code::Unauthenticated => "unauthorized",
                Code::PermissionDenied => "forbidden",
                Code::ResourceExhausted => "rate_limited",
                Code::DeadlineExceeded | Code::Cancelled => "timeout",
                Code::Unavailable => "unavailable",
                _ => "internal",
            }
            .to_string()
        });
        let mut error = Error::new(code, status.message());
        if let Some(params) = header(ERROR_PARAMS_HEADER)
            .and_then(|p| serde_json::from_str::<BTreeMap<String, String>>(&p).ok())
        {
            error.params = params;
        }
        if let Some(retryable) = header(ERROR_RETRYABLE_HEADER) {
            error.retryable = retryable == "true";
        }
        error
    }
}

impl From<sterling_storage::StorageError> for Error {
    fn from(e: sterling_storage::StorageError) -> Self {
        use sterling_storage::StorageError as S;
        match e {
            S::Unavailable(m) => Error::unavailable("storage", m),
            S::Invalid(m) | S::Schema(m) | S::Decode(m) => Error::internal(format!("storage: {m}")),
        }
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
