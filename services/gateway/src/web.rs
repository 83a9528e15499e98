//! The web page the gateway serves at `/`: sign in, the account with its balance, its card
//! (freeze, unfreeze), the feed live, and in development a card terminal. Three static files
//! compiled in, served with a content security policy that lets them talk to this origin
//! only; the page uses the public API like any other client.

use axum::http::header::{self, HeaderName};
use axum::response::IntoResponse;

/// Headers of every file of the page: nothing runs or loads from elsewhere, nothing frames it.
const HEADERS: [(HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-cache"),
];

/// `GET /`: the page.
pub async fn page() -> impl IntoResponse {
    (
        HEADERS,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../web/index.html"),
    )
}

/// `GET /app.js`: its script.
pub async fn script() -> impl IntoResponse {
    (
        HEADERS,
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../web/app.js"),
    )
}

/// `GET /app.css`: its style.
pub async fn style() -> impl IntoResponse {
    (
        HEADERS,
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../web/app.css"),
    )
}

/// `GET /favicon.ico`: none, said plainly (browsers ask for it).
pub async fn icon() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}
