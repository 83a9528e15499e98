//! Cross-origin requests: the web page the gateway serves shares its origin and needs none,
//! so by default no other origin's script may read the API (no CORS headers, and preflights
//! refused). A page served from elsewhere is allowed by naming its origin in `web_origins`:
//! its preflights are answered and its responses carry `Access-Control-Allow-Origin`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sterling_template::Error;
use sterling_template::server::Problem;

/// The origins allowed to call the API from a browser.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// From a comma-separated list of origins (`https://app.example.com`); empty allows none.
    pub fn parse(list: &str) -> Self {
        AllowedOrigins(
            list.split(',')
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
        )
    }

    fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// What a preflight may ask for.
const METHODS: &str = "GET, POST, PUT, DELETE";
const HEADERS: &str = "authorization, content-type, idempotency-key";
const EXPOSED: &str = "retry-after, www-authenticate, x-request-id";

/// Answers preflights of allowed origins, refuses others', and marks answers to allowed
/// origins as readable.
pub async fn cors(
    State(allowed): State<Arc<AllowedOrigins>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string)
    else {
        return next.run(request).await;
    };
    let allowed = allowed.allows(&origin);
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight && !allowed {
        let refusal = Error::forbidden("origin", "this origin may not call the API");
        return Problem(refusal).into_response();
    }
    let mut response = if preflight {
        let mut answer = StatusCode::NO_CONTENT.into_response();
        let headers = answer.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        answer
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if allowed && let Ok(origin) = HeaderValue::from_str(&origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::AllowedOrigins;

    #[test]
    fn only_named_origins_are_allowed() {
        let allowed = AllowedOrigins::parse(" https://app.example.com/, http://localhost:3000 ");
        assert!(allowed.allows("https://app.example.com"));
        assert!(allowed.allows("HTTPS://APP.EXAMPLE.COM"));
        assert!(allowed.allows("http://localhost:3000"));
        assert!(!allowed.allows("https://app.example.com.evil.example"));
        assert!(!allowed.allows("null"));
        assert!(!AllowedOrigins::parse("").allows("https://app.example.com"));
    }
}
