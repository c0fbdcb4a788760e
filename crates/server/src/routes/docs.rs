//! `GET /docs/errors` (SPEC §14): the page every error's `docs_url` points at, rendered from
//! [`crate::error_catalog::CODES`], the table the errors themselves are checked against.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;

pub async fn errors() -> Response {
    static PAGE: OnceLock<String> = OnceLock::new();
    let page = PAGE.get_or_init(crate::error_catalog::page_html).as_str();
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], page)
        .into_response()
}
