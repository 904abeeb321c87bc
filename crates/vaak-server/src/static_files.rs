//! The browser client (`static/`), embedded in the binary.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// (URL path, content type, body) of every embedded file.
pub const FILES: [(&str, &str, &str); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../static/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/app.js"),
    ),
    (
        "/worklets.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/worklets.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../static/style.css"),
    ),
];

/// The response for an embedded file's path, or 404.
pub fn response(path: &str) -> Response {
    let path = if path == "/index.html" { "/" } else { path };
    match FILES.iter().find(|(p, _, _)| *p == path) {
        Some((_, ct, body)) => (
            [
                (header::CONTENT_TYPE, *ct),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
