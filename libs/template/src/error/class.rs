//! The classes of errors: what decides an error's gRPC code, HTTP status and whether it is
//! retryable by default.

use std::fmt;

/// The class of an error: the first segment of its code, and what decides its gRPC code, HTTP
/// status and whether it is retryable by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The caller sent something invalid.
    BadRequest,
    /// The caller could not be identified.
    Unauthorized,
    /// The caller may not do this.
    Forbidden,
    /// No such thing.
    NotFound,
    /// Clashes with what is stored (an id reused for other content).
    Conflict,
    /// Valid request, but the state forbids it.
    PreconditionFailed,
    /// Too many requests.
    RateLimited,
    /// The deadline passed.
    Timeout,
    /// A dependency cannot be reached; retryable.
    Unavailable,
    /// A bug or an unexpected state.
    Internal,
}

impl ErrorClass {
    /// Every class.
    pub const ALL: [ErrorClass; 10] = [
        ErrorClass::BadRequest,
        ErrorClass::Unauthorized,
        ErrorClass::Forbidden,
        ErrorClass::NotFound,
        ErrorClass::Conflict,
        ErrorClass::PreconditionFailed,
        ErrorClass::RateLimited,
        ErrorClass::Timeout,
        ErrorClass::Unavailable,
        ErrorClass::Internal,
    ];

    /// The code segment, e.g. `not_found`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::BadRequest => "bad_request",
            ErrorClass::Unauthorized => "unauthorized",
            ErrorClass::Forbidden => "forbidden",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Conflict => "conflict",
            ErrorClass::PreconditionFailed => "precondition_failed",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Internal => "internal",
        }
    }

    /// The class a code starts with; an unknown class is `internal`.
    pub fn of(code: &str) -> ErrorClass {
        let first = code.split('.').next().unwrap_or(code);
        ErrorClass::ALL
            .into_iter()
            .find(|c| c.as_str() == first)
            .unwrap_or(ErrorClass::Internal)
    }

    /// Whether an error of this class may succeed when retried.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Unavailable | ErrorClass::Timeout | ErrorClass::RateLimited
        )
    }

    /// The HTTP status at the edge.
    pub fn http_status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ErrorClass::BadRequest => S::BAD_REQUEST,
            ErrorClass::Unauthorized => S::UNAUTHORIZED,
            ErrorClass::Forbidden => S::FORBIDDEN,
            ErrorClass::NotFound => S::NOT_FOUND,
            ErrorClass::Conflict => S::CONFLICT,
            ErrorClass::PreconditionFailed => S::UNPROCESSABLE_ENTITY,
            ErrorClass::RateLimited => S::TOO_MANY_REQUESTS,
            ErrorClass::Timeout => S::GATEWAY_TIMEOUT,
            ErrorClass::Unavailable => S::SERVICE_UNAVAILABLE,
            ErrorClass::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorClass::BadRequest => Code::InvalidArgument,
            ErrorClass::NotFound => Code::NotFound,
            ErrorClass::PreconditionFailed => Code::FailedPrecondition,
            ErrorClass::Conflict => Code::AlreadyExists,
            ErrorClass::Unauthorized => Code::Unauthenticated,
            ErrorClass::Forbidden => Code::PermissionDenied,
            ErrorClass::RateLimited => Code::ResourceExhausted,
            ErrorClass::Timeout => Code::DeadlineExceeded,
            ErrorClass::Unavailable => Code::Unavailable,
            ErrorClass::Internal => Code::Internal,
        }
    }

    /// The class of a gRPC status code that carries no Sterling code.
    pub fn from_grpc(code: tonic::Code) -> ErrorClass {
        use tonic::Code;
        match code {
            Code::InvalidArgument | Code::OutOfRange => ErrorClass::BadRequest,
            Code::NotFound => ErrorClass::NotFound,
            Code::FailedPrecondition => ErrorClass::PreconditionFailed,
            Code::AlreadyExists | Code::Aborted => ErrorClass::Conflict,
            Code::Unauthenticated => ErrorClass::Unauthorized,
            Code::PermissionDenied => ErrorClass::Forbidden,
            Code::ResourceExhausted => ErrorClass::RateLimited,
            Code::DeadlineExceeded | Code::Cancelled => ErrorClass::Timeout,
            Code::Unavailable => ErrorClass::Unavailable,
            _ => ErrorClass::Internal,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorClass {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
