//! Prometheus metrics (SPEC §12) at `GET /metrics`: requests and latency per route, upstream
//! errors, reservations, open holds, ledger commit latency and batch size, rate-limit decisions
//! and Redis fallbacks. One process-wide recorder (installed once), rendered on scrape.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds: 100 µs to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Install the recorder (first call in the process) and return its handle.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("quota_ledger_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                    )
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Tower layer body: count and time every request by its route template.
pub async fn layer(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("quota_http_requests_total", "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("quota_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`. With `metrics_token` set, only for `Authorization: Bearer <metrics_token>`
/// (compared in constant time); otherwise 401 `invalid_api_key` (SPEC §12).
pub async fn render(State(state): State<crate::SharedState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = state.config.metrics_token.as_deref().filter(|t| !t.is_empty()) {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .unwrap_or("");
        let same =
            given.len() == token.len() && bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.as_bytes()));
        if !same {
            let mut resp =
                crate::error::ApiError::invalid_api_key("GET /metrics needs Authorization: Bearer <metrics_token>")
                    .into_response();
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"quota-metrics\""),
            );
            return resp;
        }
    }
    metrics::gauge!("quota_ledger_open_holds").set(state.ledger.open_holds() as f64);
    match handle() {
        Some(h) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response(),
        None => crate::error::ApiError::internal().into_response(),
    }
}
