//! Usage, ledger and analytics (SPEC §9): `GET /v1/usage` (session or key; JSON or streamed
//! CSV), `GET /v1/ledger` (session), `/developers/analytics/summary|timeseries|breakdown`
//! (session). Analytics come from the usage records written with each charge (the same commit
//! as its transfers) and the daily aggregates retention keeps, bucketed in UTC.

use crate::app::SharedState;
use crate::auth::SessionUser;
use crate::error::{internal, ApiError};
use crate::routes::PageQuery;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use quota_core::AccountId;
use quota_store::clock::{civil_from_days, days_from_civil, rfc3339};
use quota_store::usage::{UsageAggregate, UsageFilter, UsageRecord, DAY_MS};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub key_id: Option<String>,
    pub app_id: Option<String>,
    pub model: Option<String>,
    pub billing_mode: Option<String>,
    pub format: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// `YYYY-MM-DD` (UTC midnight) or RFC 3339 → Unix ms.
pub fn parse_time(name: &str, s: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::bad_request(format!("{name} must be a date (YYYY-MM-DD) or an RFC 3339 time"));
    let date = |d: &str| quota_core::calendar::parse_date(d).map(|days| days * DAY_MS);
    if s.len() == 10 {
        return date(s).ok_or_else(bad);
    }
    // An unencoded `+` in a query string arrives as a space: `…T10:00:00 02:00` meant `+02:00`.
    let s = match s.get(19..).and_then(|tail| tail.find(' ')) {
        Some(i) => std::borrow::Cow::Owned(format!("{}+{}", &s[..19 + i], &s[19 + i + 1..])),
        None => std::borrow::Cow::Borrowed(s),
    };
    quota_core::calendar::parse_rfc3339(&s).ok_or_else(bad)
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
        state.store.usage_records(&filter, offset as i64, limit as i64 + 1).await
    } else {
        let after = keyset.as_ref().map(|(at, id)| (*at, id.as_str()));
        state.store.usage_records_after(&filter, after, limit as i64 + 1).await
    }
    .map_err(internal("usage"))?;
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
            match state.store.usage_records_after(&filter, position, CSV_CHUNK_ROWS).await {
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
                Err(e) => {
                    tracing::error!(error = %e, "usage CSV read failed");
                    Some((Err(std::io::Error::other("usage read failed")), None))
                }
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

/// `GET /v1/ledger`: transfers touching the caller's wallet and earnings, newest first.
pub async fn ledger(
    State(state): State<SharedState>,
    s: SessionUser,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let (offset, limit) = page.parse()?;
    let accounts = vec![
        AccountId::wallet(&s.user.id).to_string(),
        AccountId::EarningsPending(s.user.id.clone()).to_string(),
        AccountId::EarningsAvailable(s.user.id.clone()).to_string(),
    ];
    let rows =
        state.store.transfers_touching(&accounts, offset as i64, limit as i64 + 1).await.map_err(internal("ledger"))?;
    let next = (rows.len() > limit).then(|| crate::routes::cursor_at(offset + limit));
    let data: Vec<Value> = rows
        .iter()
        .take(limit)
        .map(|t| {
            let from = t.from.to_string();
            let ours = |a: &String| accounts.contains(a);
            let direction = match (ours(&from), ours(&t.to.to_string())) {
                (true, true) => "internal",
                (true, false) => "debit",
                _ => "credit",
            };
            json!({
                "id": t.id,
                "object": "ledger_entry",
                "from": from,
                "to": t.to.to_string(),
                "amount": t.amount.get(),
                "direction": direction,
                "kind": t.kind.as_str(),
                "cause": t.cause,
                "created_at": rfc3339(t.created_at_ms),
            })
        })
        .collect();
    Ok(Json(json!({"data": data, "next_cursor": next})))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsQuery {
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub interval: Option<String>,
    pub group_by: Option<String>,
    pub metric: Option<String>,
}

const METRICS: &[&str] = &["revenue", "cost", "profit", "users", "requests", "tokens"];

/// Sums over some usage rows, from the developer's side: `revenue` is the markup credited to
/// their earnings, `cost` what their own wallet paid (sandbox included), `profit` the
/// difference, `users` distinct end-user wallets that paid, `requests`, `tokens` (in + out).
#[derive(Default)]
struct Totals {
    revenue: i64,
    cost: i64,
    users: HashSet<String>,
    requests: i64,
    tokens: i64,
}

impl Totals {
    fn add(&mut self, r: &UsageAggregate, own_wallet: &str) {
        if !r.sandbox {
            self.revenue += r.markup;
        }
        if r.payer_account == own_wallet {
            self.cost += r.total;
        } else {
            self.users.insert(r.payer_account.clone());
        }
        self.requests += r.requests;
        self.tokens += r.tokens;
    }

    fn json(&self) -> Value {
        json!({
            "revenue": self.revenue,
            "cost": self.cost,
            "profit": self.revenue - self.cost,
            "users": self.users.len(),
            "requests": self.requests,
            "tokens": self.tokens,
        })
    }

    fn metric(&self, m: &str) -> i64 {
        match m {
            "cost" => self.cost,
            "profit" => self.revenue - self.cost,
            "users" => self.users.len() as i64,
            "requests" => self.requests,
            "tokens" => self.tokens,
            _ => self.revenue,
        }
    }
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

/// Parameter `name`'s value, `default` when absent; refused unless one of `allowed`.
fn choice(value: &Option<String>, name: &str, default: &str, allowed: &[&str]) -> Result<String, ApiError> {
    let v = value.clone().unwrap_or_else(|| default.into());
    if !allowed.contains(&v.as_str()) {
        return Err(ApiError::bad_request(format!("{name} must be one of {}", allowed.join(", "))));
    }
    Ok(v)
}

/// The caller's usage in `[start, end)` summed into groups named by `group`.
async fn grouped<K: Ord>(
    state: &SharedState,
    developer: &str,
    (start, end): (i64, i64),
    group: impl Fn(&UsageAggregate) -> K,
) -> Result<BTreeMap<K, Totals>, ApiError> {
    let rows = state.store.usage_aggregates(developer, start, end).await.map_err(internal("analytics"))?;
    let own = AccountId::wallet(developer).to_string();
    let mut groups: BTreeMap<K, Totals> = BTreeMap::new();
    for r in rows {
        groups.entry(group(&r)).or_default().add(&r, &own);
    }
    Ok(groups)
}

fn period_json(start: i64, end: i64) -> Value {
    json!({"start": rfc3339(start), "end": rfc3339(end)})
}

/// `GET /developers/analytics/summary`.
pub async fn summary(
    State(state): State<SharedState>,
    s: SessionUser,
    Query(q): Query<AnalyticsQuery>,
) -> Result<Json<Value>, ApiError> {
    let (start, end) = period(&state, &q)?;
    let t = grouped(&state, &s.user.id, (start, end), |_| ()).await?.remove(&()).unwrap_or_default();
    Ok(Json(json!({"summary": t.json(), "period": period_json(start, end)})))
}

/// The start (ms) of the UTC `interval` bucket holding `at`; weeks start on Monday.
pub fn bucket_start(at: i64, interval: &str) -> i64 {
    let day = at.div_euclid(DAY_MS);
    match interval {
        "hour" => at.div_euclid(3_600_000) * 3_600_000,
        // 1970-01-01 was a Thursday: day 4 of a Monday-based week (0 = Monday).
        "week" => (day - (day + 3).rem_euclid(7)) * DAY_MS,
        "month" => {
            let (y, m, _) = civil_from_days(day);
            days_from_civil(y, m, 1) * DAY_MS
        }
        _ => day * DAY_MS,
    }
}

/// `GET /developers/analytics/timeseries`: one bucket per interval that has usage.
pub async fn timeseries(
    State(state): State<SharedState>,
    s: SessionUser,
    Query(q): Query<AnalyticsQuery>,
) -> Result<Json<Value>, ApiError> {
    let (start, end) = period(&state, &q)?;
    let metric = choice(&q.metric, "metric", "revenue", METRICS)?;
    let interval = choice(&q.interval, "interval", "day", &["hour", "day", "week", "month"])?;
    let buckets = grouped(&state, &s.user.id, (start, end), |r| bucket_start(r.at, &interval)).await?;
    let data: Vec<Value> = buckets
        .iter()
        .map(|(at, t)| {
            let mut v = t.json();
            v["start"] = Value::String(rfc3339(*at));
            v["value"] = Value::from(t.metric(&metric));
            v
        })
        .collect();
    Ok(Json(json!({"metric": metric, "interval": interval, "data": data, "period": period_json(start, end)})))
}

/// `GET /developers/analytics/breakdown`: rows by model, user (paying wallet), app or key,
/// largest metric first.
pub async fn breakdown(
    State(state): State<SharedState>,
    s: SessionUser,
    Query(q): Query<AnalyticsQuery>,
) -> Result<Json<Value>, ApiError> {
    let (start, end) = period(&state, &q)?;
    let metric = choice(&q.metric, "metric", "revenue", METRICS)?;
    let group_by = choice(&q.group_by, "groupBy", "model", &["model", "user", "app", "key"])?;
    let key = |r: &UsageAggregate| -> String {
        match group_by.as_str() {
            "user" => r.payer_account.strip_prefix("wallet:").unwrap_or(&r.payer_account).to_string(),
            "app" => r.app_id.clone(),
            "key" => r.key_id.clone(),
            _ => r.model.clone(),
        }
    };
    let groups = grouped(&state, &s.user.id, (start, end), key).await?;
    let mut data: Vec<(i64, Value)> = groups
        .iter()
        .map(|(k, t)| {
            let mut v = t.json();
            v["key"] = if k.is_empty() { Value::Null } else { Value::String(k.clone()) };
            v["value"] = Value::from(t.metric(&metric));
            (t.metric(&metric), v)
        })
        .collect();
    data.sort_by_key(|d| std::cmp::Reverse(d.0));
    let data: Vec<Value> = data.into_iter().map(|(_, v)| v).collect();
    Ok(Json(json!({"metric": metric, "groupBy": group_by, "data": data, "period": period_json(start, end)})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_fall_on_utc_boundaries() {
        let t = parse_time("t", "2024-03-03T23:59:59Z").unwrap(); // a Sunday
        assert_eq!(rfc3339(bucket_start(t, "day")), "2024-03-03T00:00:00.000Z");
        assert_eq!(rfc3339(bucket_start(t, "week")), "2024-02-26T00:00:00.000Z");
        assert_eq!(rfc3339(bucket_start(t, "month")), "2024-03-01T00:00:00.000Z");
        assert_eq!(rfc3339(bucket_start(t, "hour")), "2024-03-03T23:00:00.000Z");
        let monday = parse_time("t", "2024-03-04").unwrap();
        assert_eq!(bucket_start(monday, "week"), monday);
    }

    #[test]
    fn times_take_rfc3339_offsets_even_with_the_plus_unencoded() {
        let utc = parse_time("t", "2024-03-03T23:59:59Z").unwrap();
        assert_eq!(parse_time("t", "2024-03-04T01:59:59+02:00").unwrap(), utc);
        assert_eq!(parse_time("t", "2024-03-03T23:59:59+00:00").unwrap(), utc);
        assert_eq!(parse_time("t", "2024-03-04T01:59:59 02:00").unwrap(), utc, "`+` decoded as a space");
        assert!(parse_time("t", "2024-03-03T23:59:59").is_err());
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
    }
}
