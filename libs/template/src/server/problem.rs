//! Layer 6, HTTP only: problem documents. [`Problem`] answers an [`Error`] as RFC 9457
//! `application/problem+json`; [`problem_json`] turns every other error response (the
//! router's 404 and 405, a body over the limit's 413, an extractor's 400 or 415) into one, so
//! a client reads one shape of error whatever failed.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::CONTENT_TYPE;

use crate::context::RequestContext;
use crate::error::Error;

/// Media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The stable code of an error response, left in its extensions for the log line.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub String);

/// An error answered as `application/problem+json`.
pub struct Problem(pub Error);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        respond(self.0.http_status(), &self.0)
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        Problem(e)
    }
}

fn respond(status: StatusCode, error: &Error) -> Response {
    let mut body = error.problem_json(&RequestContext::current_request_id());
    body["status"] = status.as_u16().into();
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(PROBLEM_JSON));
    response
        .extensions_mut()
        .insert(ErrorCode(error.code().to_string()));
    response
}

/// The error an HTTP status stands for when nothing better was said.
pub fn error_of_status(status: StatusCode) -> Error {
    match status {
        StatusCode::NOT_FOUND => Error::not_found("route", "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => {
            Error::bad_request("method", "this endpoint does not accept that method")
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            Error::bad_request("too_large", "the request body is larger than allowed")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Error::bad_request("content_type", "the body must be application/json")
        }
        s if s.is_server_error() => Error::internal("the request failed"),
        _ => Error::bad_request("body", "the request could not be read"),
    }
}

/// Response mapper: an error response that is not a problem document becomes one, keeping its
/// status (use with `axum::middleware::map_response`).
pub async fn problem_json(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let mut answer = respond(status, &error_of_status(status));
    if let Some(allow) = response.headers().get(http::header::ALLOW) {
        answer
            .headers_mut()
            .insert(http::header::ALLOW, allow.clone());
    }
    answer
}
