//! Usage, ledger and analytics (SPEC §9): `GET /v1/usage` (session or key; JSON or streamed
//! CSV), `GET /v1/ledger` (session), `/developers/analytics/summary|timeseries|breakdown`
//! (session). Thin: the caller, the query parsed into typed values, then
//! [`crate::services::usage`]; the JSON (or CSV) is shaped here.

use crate::app::SharedState;
use crate::auth::SessionUser;
use crate::error::ApiError;
use crate::routes::PageQuery;
use crate::services::usage::{self as service, bucket_start, group_key, parse_time, Choice, Totals};
use crate::services::usage::{GroupBy, Interval, LedgerEntry, Metric};
use crate::services::Paging;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use quota_store::clock::rfc3339;
use quota_store::usage::{UsageFilter, UsageRecord, DAY_MS};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// RFC 3339 (or a date), inclusive.
    pub from: Option<String>,
    /// RFC 3339 (or a date), exclusive.
    pub to: Option<String>,
    pub key_id: Option<String>,
    pub app_id: Option<String>,
    pub model: Option<String>,
    /// `developer`, `user` or `test`.
    pub billing_mode: Option<String>,
    /// `json` (the default) or `csv`.
    pub format: Option<String>,
    /// Items per page, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The developer behind a session or an API key (for `GET /v1/usage`).
async fn developer_of(state: &SharedState, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(secret) = crate::auth::api_key_secret(headers) {
        if secret.starts_with(crate::auth::API_KEY_PREFIX) {
            return Ok(crate::auth::admit_key(state, Some(secret)).await?.user_id.clone());
        }
    }
    let mut parts = axum::http::Request::new(()).into_parts().0;
    parts.headers = headers.clone();
    let s =
        <SessionUser as axum::extract::FromRequestParts<SharedState>>::from_request_parts(&mut parts, state).await?;
    Ok(s.user.id)
}

/// A usage record as the API shows it: `usage.completed`'s data with the record's id and time.
fn usage_json(r: &UsageRecord) -> Value {
    let mut v = r.event_data();
    v["id"] = Value::String(r.id.clone());
    v["created_at"] = Value::String(rfc3339(r.created_at));
    v
}

const CSV_HEADER: &str = "id,created_at,key_id,app_id,payer,billing_mode,model,provider,input_tokens,cached_tokens,\
output_tokens,base_cost,markup,total,status,latency_ms,sandbox\n";

/// A CSV field: quoted when it holds a comma, quote or newline; a leading `= + - @` is
/// prefixed with `'` so a spreadsheet never runs it as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_string() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv_row(r: &UsageRecord) -> String {
    let o = |v: &Option<String>| v.as_deref().map(csv_field).unwrap_or_default();
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
        csv_field(&r.id),
        rfc3339(r.created_at),
        o(&r.key_id),
        o(&r.app_id),
        csv_field(&r.payer_account),
        csv_field(&r.billing_mode),
        csv_field(&r.model),
        csv_field(&r.provider),
        r.input_tokens,
        r.cached_tokens,
        r.output_tokens,
        r.base_cost,
        r.markup,
        r.total,
        csv_field(&r.status),
        r.latency_ms,
        r.sandbox
    )
}

/// Rows per database read while streaming CSV.
const CSV_CHUNK_ROWS: i64 = 1000;

/// `GET /v1/usage`.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "reporting",
    summary = "Usage records, newest first (JSON pages, or all of them as CSV with `format=csv`)",
    params(UsageQuery),
    responses(
        (status = 200, description = "a page of records, or CSV", content((crate::openapi::schemas::Page<crate::openapi::schemas::UsageRecord> = "application/json"), (String = "text/csv"))),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []), ("apiKey" = []), ("apiKeyHeader" = []))
)]
pub async fn usage(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(q): Query<UsageQuery>,
) -> Result<Response, ApiError> {
    let developer_id = developer_of(&state, &headers).await?;
    let time = |name: &str, v: &Option<String>| v.as_deref().map(|s| parse_time(name, s)).transpose();
    if let Some(m) = &q.billing_mode {
        m.parse::<quota_core::BillingMode>()
            .map_err(|_| ApiError::bad_request(format!("billing_mode `{m}` is not one of developer, user, test")))?;
    }
    let filter = UsageFilter {
        developer_id,
        from: time("from", &q.from)?,
        to: time("to", &q.to)?,
        key_id: q.key_id.clone(),
        app_id: q.app_id.clone(),
        model: q.model.clone(),
        billing_mode: q.billing_mode.clone(),
    };
    match q.format.as_deref() {
        None | Some("json") => {}
        Some("csv") => return Ok(csv_stream(state, filter)),
        Some(f) => return Err(ApiError::bad_request(format!("format `{f}` is not json or csv"))),
    }
    // Keyset pages (`next_cursor` names the last record shown); an offset cursor from an older
    // `next_cursor` still works.
    let keyset = q.cursor.as_deref().and_then(crate::routes::parse_keyset_cursor);
    let page = PageQuery { limit: q.limit, cursor: if keyset.is_some() { None } else { q.cursor } };
    let (offset, limit) = page.parse()?;
    let rows = if offset > 0 {
        service::records(&state, &filter, Paging { offset, limit: limit + 1 }).await?.items
    } else {
        let after = keyset.as_ref().map(|(at, id)| (*at, id.as_str()));
        service::records_after(&state, &filter, after, limit as i64 + 1).await?
    };
    let next =
        (rows.len() > limit).then(|| crate::routes::keyset_cursor(rows[limit - 1].created_at, &rows[limit - 1].id));
    let data: Vec<Value> = rows.iter().take(limit).map(usage_json).collect();
    Ok(Json(json!({"data": data, "next_cursor": next})).into_response())
}

/// Every matching record as CSV, read and sent a chunk at a time (never all in memory).
fn csv_stream(state: SharedState, filter: UsageFilter) -> Response {
    // Keyset chunks: each read starts after the last row sent (an offset would re-read them all).
    let chunks = futures::stream::unfold(Some(None::<(i64, String)>), move |after| {
        let state = state.clone();
        let filter = filter.clone();
        async move {
            let after = after?;
            let mut out = if after.is_none() { CSV_HEADER.to_string() } else { String::new() };
            let position = after.as_ref().map(|(at, id)| (*at, id.as_str()));
            match service::records_after(&state, &filter, position, CSV_CHUNK_ROWS).await {
                Ok(rows) => {
                    for r in &rows {
                        out.push_str(&csv_row(r));
                    }
                    let next = rows
                        .last()
                        .filter(|_| rows.len() as i64 == CSV_CHUNK_ROWS)
                        .map(|last| Some((last.created_at, last.id.clone())));
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(out)), next))
                }
                Err(_) => Some((Err(std::io::Error::other("usage read failed")), None)),
            }
        }
    });
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"usage.csv\""),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}

fn ledger_json(e: &LedgerEntry) -> Value {
    let t = &e.transfer;
    json!({
        "id": t.id,
        "object": "ledger_entry",
        "from": t.from.to_string(),
        "to": t.to.to_string(),
        "amount": t.amount.get(),
        "direction": e.direction.as_str(),
        "kind": t.kind.as_str(),
        "cause": t.cause,
        "created_at": rfc3339(t.created_at_ms),
    })
}

/// `GET /v1/ledger`: transfers touching the caller's wallet and earnings, newest first.
#[utoipa::path(
    get,
    path = "/v1/ledger",
    tag = "reporting",
    summary = "Transfers touching the caller's wallet and earnings, newest first",
    params(crate::routes::PageQuery),
    responses(
        (status = 200, description = "a page of transfers", body = crate::openapi::schemas::Page<crate::openapi::schemas::LedgerEntry>),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn ledger(
    State(state): State<SharedState>,
    s: SessionUser,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let entries = service::ledger(&state, &s.user.id, page.paging()?).await?;
    let data: Vec<Value> = entries.items.iter().map(ledger_json).collect();
    Ok(Json(json!({"data": data, "next_cursor": entries.next_cursor})))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    /// A date or RFC 3339 time (default: 30 days ago).
    pub start_date: Option<String>,
    /// A date (inclusive) or RFC 3339 time (default: today).
    pub end_date: Option<String>,
    /// `hour`, `day` (the default), `week` or `month` (timeseries).
    pub interval: Option<String>,
    /// `model` (the default), `user`, `app` or `key` (breakdown).
    pub group_by: Option<String>,
    /// `revenue` (the default), `cost`, `profit`, `requests`, `tokens` or `users`.
    pub metric: Option<String>,
}

fn totals_json(t: &Totals) -> Value {
    json!({
        "revenue": t.revenue,
        "cost": t.cost,
        "profit": t.revenue - t.cost,
        "users": t.users.len(),
        "requests": t.requests,
        "tokens": t.tokens,
    })
}

/// `[start, end)` in ms from `startDate`/`endDate` (dates inclusive; default the last 30 days).
fn period(state: &SharedState, q: &AnalyticsQuery) -> Result<(i64, i64), ApiError> {
    let today = state.clock.now_ms().div_euclid(DAY_MS) * DAY_MS;
    let end = match &q.end_date {
        Some(s) if s.len() == 10 => parse_time("endDate", s)? + DAY_MS,
        Some(s) => parse_time("endDate", s)?,
        None => today + DAY_MS,
    };
    let start = match &q.start_date {
        Some(s) => parse_time("startDate", s)?,
        None => today - 30 * DAY_MS,
    };
    if start >= end {
        return Err(ApiError::bad_request("startDate must be before endDate"));
    }
    Ok((start, end))
}

/// Parameter `name`'s value, `default` when absent; refused unless one of `C`'s names.
fn choice<C: Choice>(value: &Option<String>, name: &str, default: C) -> Result<C, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => {
            C::parse(v).ok_or_else(|| ApiError::bad_request(format!("{name} must be one of {}", C::names().join(", "))))
        }
    }
}

fn period_json(start: i64, end: i64) -> Value {
    json!({"start": rfc3339(start), "end": rfc3339(end)})
}

/// `GET /developers/analytics/summary`.
#[utoipa::path(
    get,
    path = "/developers/analytics/summary",
    tag = "reporting",
    summary = "Revenue, cost, profit, users, requests and tokens over a period",
    params(AnalyticsQuery),
    responses(
        (status = 200, description = "the totals", body = crate::openapi::schemas::AnalyticsSummary),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn summary(
    State(state): State<SharedState>,
    s: SessionUser,
    Query(q): Query<AnalyticsQuery>,
) -> Result<Json<Value>, ApiError> {
    let (start, end) = period(&state, &q)?;
    let t = service::grouped(&state, &s.user.id, (start, end), |_| ()).await?.remove(&()).unwrap_or_default();
    Ok(Json(json!({"summary": totals_json(&t), "period": period_json(start, end)})))
}

/// `GET /developers/analytics/timeseries`: one bucket per interval that has usage.
#[utoipa::path(
    get,
    path = "/developers/analytics/timeseries",
    tag = "reporting",
    summary = "One bucket per interval that has usage",
    params(AnalyticsQuery),
    responses(
        (status = 200, description = "the buckets", body = crate::openapi::schemas::AnalyticsTimeseries),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn timeseries(
    State(state): State<SharedState>,
    s: SessionUser,
    Query(q): Query<AnalyticsQuery>,
) -> Result<Json<Value>, ApiError> {
    let (start, end) = period(&state, &q)?;
    let metric = choice(&q.metric, "metric", Metric::Revenue)?;
    let interval = choice(&q.interval, "interval", Interval::Day)?;
    let buckets = service::grouped(&state, &s.user.id, (start, end), |r| bucket_start(r.at, interval)).await?;
    let data: Vec<Value> = buckets
        .iter()
        .map(|(at, t)| {
            let mut v = totals_json(t);
            v["start"] = Value::String(rfc3339(*at));
            v["value"] = Value::from(t.metric(metric));
            v
        })
        .collect();
    let period = period_json(start, end);
    Ok(Json(json!({"metric": metric.as_str(), "interval": interval.as_str(), "data": data, "period": period})))
}

/// `GET /developers/analytics/breakdown`: rows by model, user (paying wallet), app or key,
/// largest metric first.
#[utoipa::path(
    get,
    path = "/developers/analytics/breakdown",
    tag = "reporting",
    summary = "Totals by model, user, app or key, largest first",
    params(AnalyticsQuery),
    responses(
        (status = 200, description = "the rows", body = crate::openapi::schemas::AnalyticsBreakdown),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn breakdown(
    State(state): State<SharedState>,
    s: SessionUser,
    Query(q): Query<AnalyticsQuery>,
) -> Result<Json<Value>, ApiError> {
    let (start, end) = period(&state, &q)?;
    let metric = choice(&q.metric, "metric", Metric::Revenue)?;
    let group_by = choice(&q.group_by, "groupBy", GroupBy::Model)?;
    let groups = service::grouped(&state, &s.user.id, (start, end), |r| group_key(r, group_by)).await?;
    let mut data: Vec<(i64, Value)> = groups
        .iter()
        .map(|(k, t)| {
            let mut v = totals_json(t);
            v["key"] = if k.is_empty() { Value::Null } else { Value::String(k.clone()) };
            v["value"] = Value::from(t.metric(metric));
            (t.metric(metric), v)
        })
        .collect();
    data.sort_by_key(|d| std::cmp::Reverse(d.0));
    let data: Vec<Value> = data.into_iter().map(|(_, v)| v).collect();
    let period = period_json(start, end);
    Ok(Json(json!({"metric": metric.as_str(), "groupBy": group_by.as_str(), "data": data, "period": period})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
    }
}
