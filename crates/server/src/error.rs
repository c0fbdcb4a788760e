//! Quota's errors as its API shows them (SPEC §0, §13): one JSON shape, a stable `code`, an
//! OpenAI-compatible `type`, a `docs_url` into the `/docs/errors` page (SPEC §14, made from
//! [`crate::error_catalog`]), never a stack trace, SQL or secret.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use quota_providers::UpstreamError;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
    /// The rate-limit state to report in headers (on a 429 from Quota's own limits).
    pub rate_limit: Option<Box<crate::limit::gcra::Decision>>,
    /// Machine-readable details beside `code` and `message` in the `error` object (a 402's
    /// `required`, `available`, `max_affordable_tokens`).
    /// Boxed: errors travel in every `Result` of the request path, and most have none.
    pub fields: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        debug_assert!(
            crate::error_catalog::lookup(code).is_some(),
            "error code `{code}` is not in error_catalog::CODES (SPEC §13, the /docs/errors page)"
        );
        ApiError {
            status,
            code,
            message: message.into(),
            hint: None,
            retry_after: None,
            rate_limit: None,
            fields: None,
        }
    }

    /// Add a detail to the `error` object.
    pub fn with_field(mut self, name: &str, value: impl Into<serde_json::Value>) -> ApiError {
        self.fields.get_or_insert_with(Default::default).insert(name.to_string(), value.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ApiError {
        self.hint = Some(hint.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid_api_key(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// 402 for a transfer or hold the payer cannot cover, with what it needed and had
    /// (SPEC §4.3(2)): `error.required`, `error.available`.
    pub fn insufficient_credits(available: i64, needed: i64) -> ApiError {
        let available = available.max(0);
        ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_credits",
            format!("insufficient credits: this request needs up to {needed} credits and {available} are available"),
        )
        .with_hint("top up the wallet, or lower max_tokens to reserve less")
        .with_field("required", needed)
        .with_field("available", available)
    }

    /// A bug or an unavailable database. Logged with the request id by the caller; the client
    /// sees no detail.
    pub fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error; nothing was charged")
    }

    /// The OpenAI-style `type` for this status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 409 | 413 => "invalid_request_error",
            401 => "authentication_error",
            402 => "insufficient_quota",
            403 => "permission_error",
            429 => "rate_limit_error",
            _ => "api_error",
        }
    }

    pub fn body_json(&self) -> serde_json::Value {
        let mut error = json!({
            "code": self.code,
            "message": self.message,
            "type": self.kind(),
            "docs_url": crate::error_catalog::docs_url(self.code),
        });
        if let Some(h) = &self.hint {
            error["hint"] = json!(h);
        }
        if let Some(obj) = error.as_object_mut() {
            for (k, v) in self.fields.iter().flat_map(|f| f.iter()) {
                obj.insert(k.clone(), v.clone());
            }
        }
        json!({ "error": error })
    }
}

impl ApiError {
    /// An HTML page answering this error (the sign-in forms) keeps its `Retry-After`.
    pub fn with_retry_after(&self, mut resp: Response) -> Response {
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body_json().to_string();
        let mut resp = (self.status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(d) = &self.rate_limit {
            crate::limit::apply_headers(resp.headers_mut(), d, 60, quota_store::now_ms() / 1000);
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> ApiError {
        match e {
            UpstreamError::RateLimited(m) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit",
                format!("the provider is rate limiting requests: {m}"),
            )
            .with_hint("retry later; nothing was charged"),
            UpstreamError::Status { status, message } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("the provider returned an error ({status}): {message}"),
            ),
            UpstreamError::Transport(m) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("could not complete the provider call: {m}"),
            ),
            UpstreamError::Timeout => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "the provider did not answer in time; nothing was charged",
            ),
            UpstreamError::NotConfigured(p) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                format!("the {p} provider is not configured on this gateway"),
            )
            .with_hint("set its API key in the gateway's configuration, or use a sandbox (test) key"),
            UpstreamError::InvalidRequest(m) => ApiError::bad_request(m),
        }
    }
}

/// Map storage failures to a 500, logging the cause (which may contain SQL) server-side only.
pub fn internal<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> ApiError {
    move |e| {
        tracing::error!(error = %e, "{context}");
        ApiError::internal()
    }
}

/// Longest plain-text rejection [`json_rejections`] reads (axum's are one line).
const REJECTION_TEXT_MAX_BYTES: usize = 4096;

/// The layer that keeps SPEC §0's promise "every error is JSON" for the errors axum answers
/// itself: an extractor's rejection (a query string that does not parse, such as
/// `?limit=1&limit=2`, or a path segment that is not valid UTF-8) is plain text. It becomes the
/// §13 shape, with the same message; 415 and 422 become 400 `bad_request` (§13 has neither).
pub async fn json_rejections(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let plain_text = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain"));
    if !plain_text || !(resp.status().is_client_error() || resp.status().is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, REJECTION_TEXT_MAX_BYTES).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let error = match parts.status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(parts.status, "payload_too_large", "the request body is larger than this gateway accepts")
        }
        StatusCode::NOT_FOUND => ApiError::new(parts.status, "not_found", text),
        s if s.is_server_error() => ApiError::internal(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => ApiError::bad_request(text),
        s => ApiError::new(s, "bad_request", text),
    };
    let mut out = error.into_response();
    for (name, value) in parts.headers.iter().filter(|(n, _)| *n != axum::http::header::CONTENT_TYPE) {
        if !out.headers().contains_key(name) && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
