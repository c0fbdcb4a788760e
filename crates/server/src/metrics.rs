//! Prometheus metrics (SPEC §12) at `GET /metrics`: requests and latency per route, upstream
//! errors, reservations, open holds, ledger commit latency and batch size, rate-limit decisions
//! and Redis fallbacks; tokens and credits by model and billing mode, time to first token,
//! stream duration and upstream latency by provider. One process-wide recorder (installed
//! once), rendered on scrape; every series is described (`# HELP`) in [`SERIES`].
//!
//! Cardinality is bounded: labels are route templates, providers, catalog models (a model the
//! catalog lacks is refused before any of these are counted), billing modes, statuses and
//! outcomes, never a key, user, app or request id.

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
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// A series' kind, for its description.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every series Quota records, with its `# HELP` text. A series recorded anywhere in the
/// workspace must be listed here (a test reads the sources to check).
const SERIES: &[(&str, Kind, &str)] = &[
    ("quota_http_requests_total", Kind::Counter, "HTTP requests answered, by route template and status."),
    (
        "quota_http_request_duration_seconds",
        Kind::Histogram,
        "Time to answer an HTTP request (to its headers), by route template.",
    ),
    ("quota_reservations_total", Kind::Counter, "Holds asked of the ledger, by outcome (held, insufficient)."),
    (
        "quota_client_disconnects_total",
        Kind::Counter,
        "Inference requests whose client left while they were in flight.",
    ),
    ("quota_hold_overruns_total", Kind::Counter, "Requests the provider billed above their hold, by provider."),
    (
        "quota_losses_credits_total",
        Kind::Counter,
        "Credits booked to platform:losses because a provider billed above the hold.",
    ),
    (
        "quota_upstream_errors_total",
        Kind::Counter,
        "Inference requests that ended without a charge, by provider and error code.",
    ),
    (
        "quota_upstream_latency_seconds",
        Kind::Histogram,
        "Time for a provider to answer (the whole answer; a stream's response headers), by provider.",
    ),
    (
        "quota_time_to_first_token_seconds",
        Kind::Histogram,
        "From a streaming request's arrival to its first chunk forwarded, by provider.",
    ),
    (
        "quota_stream_duration_seconds",
        Kind::Histogram,
        "From a streaming request's arrival to its end (settled, failed or abandoned), by provider.",
    ),
    (
        "quota_tokens_total",
        Kind::Counter,
        "Tokens metered on settled requests, by model, billing mode and direction (input, output).",
    ),
    (
        "quota_credits_spent_total",
        Kind::Counter,
        "Credits charged to payers on settled requests, by model and billing mode.",
    ),
    (
        "quota_ratelimit_decisions_total",
        Kind::Counter,
        "Rate-limit decisions on inference requests, by whether the request was allowed.",
    ),
    (
        "quota_ratelimit_redis_fallback_total",
        Kind::Counter,
        "Rate-limit checks that fell back to the local limiter because Redis failed.",
    ),
    ("quota_ledger_open_holds", Kind::Gauge, "Holds open in this process's ledger."),
    ("quota_ledger_commit_seconds", Kind::Histogram, "Time to commit one ledger batch."),
    ("quota_ledger_batch_size", Kind::Histogram, "Settlements and holds per ledger transaction."),
    ("quota_ledger_hold_seconds", Kind::Histogram, "PostgreSQL: time to place one hold."),
    ("quota_ledger_holds_expired_total", Kind::Counter, "Holds freed because they outlived hold_ttl_secs."),
    ("quota_ledger_refused_total", Kind::Counter, "Ledger operations refused (insufficient funds or a closed ledger)."),
    ("quota_sqlite_busy_retries_total", Kind::Counter, "SQLite statements retried after SQLITE_BUSY."),
    ("quota_sqlite_wal_restarts_total", Kind::Counter, "SQLite WAL checkpoints that restarted the log."),
    ("quota_webhook_attempts_total", Kind::Counter, "Webhook delivery attempts, by outcome (success, failure)."),
    ("quota_webhook_backlog", Kind::Gauge, "Webhook work waiting, by stage (owed, outbox, deliveries)."),
];

fn describe() {
    for &(name, kind, help) in SERIES {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// A settled request's tokens and credits, by model and billing mode.
pub fn record_usage(model: &str, billing_mode: &'static str, usage: &quota_core::Usage, credits: i64) {
    let [input, output, spent] = &*usage_counters(model, billing_mode);
    input.increment(usage.prompt_tokens_total());
    output.increment(usage.output_tokens);
    spent.increment(credits.max(0).unsigned_abs());
}

/// The request path's labelled series, registered once per label set and then reused: a
/// registry lookup hashes every label and takes a lock, which a hot path should not pay on each
/// request. Keyed by a text label and a small second one, looked up without allocating; bounded
/// by the labels' own bounds (catalog models × billing modes; route templates × statuses).
type Cache<K, V> = OnceLock<parking_lot::RwLock<std::collections::HashMap<String, Vec<(K, std::sync::Arc<V>)>>>>;

fn cached<K: PartialEq + Copy, V>(
    cache: &'static Cache<K, V>,
    label: &str,
    second: K,
    make: impl FnOnce(&str, K) -> V,
) -> std::sync::Arc<V> {
    let map = cache.get_or_init(Default::default);
    let hit = map.read().get(label).and_then(|v| v.iter().find(|(k, _)| *k == second).map(|(_, s)| s.clone()));
    if let Some(series) = hit {
        return series;
    }
    let mut map = map.write();
    let entries = map.entry(label.to_owned()).or_default();
    if let Some((_, series)) = entries.iter().find(|(k, _)| *k == second) {
        return series.clone();
    }
    let series = std::sync::Arc::new(make(label, second));
    entries.push((second, series.clone()));
    series
}

fn usage_counters(model: &str, billing_mode: &'static str) -> std::sync::Arc<[metrics::Counter; 3]> {
    static CACHE: Cache<&'static str, [metrics::Counter; 3]> = OnceLock::new();
    cached(&CACHE, model, billing_mode, |model, mode| {
        let model = model.to_owned();
        [
            metrics::counter!("quota_tokens_total", "model" => model.clone(), "billing_mode" => mode, "direction" => "input"),
            metrics::counter!("quota_tokens_total", "model" => model.clone(), "billing_mode" => mode, "direction" => "output"),
            metrics::counter!("quota_credits_spent_total", "model" => model, "billing_mode" => mode),
        ]
    })
}

/// Tower layer body: count and time every request by its route template.
pub async fn layer(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let resp = next.run(req).await;
    let route = route.as_ref().map(MatchedPath::as_str).unwrap_or("unmatched");
    let series = http_series(route, resp.status().as_u16());
    series.0.increment(1);
    series.1.record(started.elapsed().as_secs_f64());
    resp
}

fn http_series(route: &str, status: u16) -> std::sync::Arc<(metrics::Counter, metrics::Histogram)> {
    static CACHE: Cache<u16, (metrics::Counter, metrics::Histogram)> = OnceLock::new();
    cached(&CACHE, route, status, |route, status| {
        let route = route.to_owned();
        (
            metrics::counter!("quota_http_requests_total", "route" => route.clone(), "status" => status.to_string()),
            metrics::histogram!("quota_http_request_duration_seconds", "route" => route),
        )
    })
}

/// `GET /metrics`. With `metrics_token` set, only for `Authorization: Bearer <metrics_token>`
/// (compared in constant time); otherwise 401 `invalid_api_key` (SPEC §12).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (text exposition format)",
    responses(
        (status = 200, description = "the metrics", body = String, content_type = "text/plain"),
        (status = 401, description = "`invalid_api_key`: `metrics_token` is set and was not sent", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::Errors,
    ),
    security((), ("metricsToken" = []))
)]
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

#[cfg(test)]
mod tests {
    /// Every `metrics::counter!("…")`, `gauge!` and `histogram!` in the workspace's sources is
    /// described in `SERIES` (a new series without `# HELP` fails here, not in production).
    #[test]
    fn every_series_recorded_in_the_sources_is_described() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut stack = vec![root];
        let mut missing = Vec::new();
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                        for (at, _) in text.match_indices(&format!("metrics::{macro_name}")) {
                            let rest = text[at..].split_once('(').unwrap().1.trim_start();
                            let name = rest.strip_prefix('"').and_then(|r| r.split_once('"')).map(|(n, _)| n);
                            let Some(name) = name.filter(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                            else {
                                continue;
                            };
                            seen += 1;
                            if !super::SERIES.iter().any(|(n, _, _)| *n == name) {
                                missing.push(format!("{name} ({})", path.display()));
                            }
                        }
                    }
                }
            }
        }
        assert!(seen > 20, "the scan found the series ({seen})");
        assert!(missing.is_empty(), "recorded but not described in metrics::SERIES: {missing:?}");
    }
}
