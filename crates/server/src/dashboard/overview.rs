//! The overview (SPEC §11): the wallet's balance in dollars, what the developer's own requests
//! cost it today and this month, a 30-day spend chart, and the latest requests.
//!
//! "Spend" here is what the signed-in account's own keys charged its own wallet (developer and
//! sandbox requests), from the same usage rows `/developers/analytics` reads. What the account
//! spent as an end user of other developers' apps is on the wallet page, per app.

use super::layout::{frame, mode_label, table, td, td_num, usd, when};
use super::{chart, html, Dash, Flash, PageError, PageResult};
use crate::app::SharedState;
use crate::services::{accounts, usage, Paging};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use quota_core::AccountId;
use quota_store::clock::{civil_from_days, days_from_civil};
use quota_store::usage::{UsageAggregate, UsageFilter, UsageRecord, DAY_MS};

/// Days the overview chart covers (today included).
pub const CHART_DAYS: i64 = 30;
/// Requests listed under "Recent requests".
const RECENT_ROWS: usize = 10;

/// Sum `value(row)` per UTC day over `[first_day_ms, first_day_ms + days)` for rows `keep` accepts.
pub async fn daily_series(
    state: &SharedState,
    developer_id: &str,
    first_day_ms: i64,
    days: i64,
    keep: impl Fn(&UsageAggregate) -> bool,
    value: impl Fn(&UsageAggregate) -> i64,
) -> Result<Vec<i64>, PageError> {
    let end = first_day_ms + days * DAY_MS;
    let rows = usage::aggregates(state, developer_id, first_day_ms, end).await?;
    let mut series = vec![0i64; days.max(0) as usize];
    for r in rows.iter().filter(|r| keep(r)) {
        let i = (r.at - first_day_ms).div_euclid(DAY_MS);
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| series.get_mut(i)) {
            *slot += value(r);
        }
    }
    Ok(series)
}

/// One usage record as a table row.
pub fn usage_row(r: &UsageRecord) -> String {
    let mode = if r.sandbox {
        "<td><span class=\"badge sandbox\">Sandbox</span></td>".to_string()
    } else {
        td(mode_label(&r.billing_mode))
    };
    format!(
        "<tr>{}{}{mode}{}{}{}{}</tr>",
        td(&when(r.created_at)),
        td(&r.model),
        td_num(&format!("{} / {}", r.input_tokens + r.cached_tokens + r.cache_write_tokens, r.output_tokens)),
        td_num(&usd(r.total)),
        td(&r.status),
        td(&r.id),
    )
}

pub const USAGE_HEAD: &[&str] = &["Time", "Model", "Mode", "Tokens in / out", "Charged", "Status", "Request"];

/// `GET /dashboard`.
pub async fn page(State(state): State<SharedState>, dash: Dash, RawQuery(q): RawQuery) -> PageResult {
    let me = dash.user_id().to_string();
    let wallet = AccountId::wallet(&me);
    let balance = accounts::balance(&state, &me).await?;
    let today = state.clock.now_ms().div_euclid(DAY_MS);
    let first = (today - CHART_DAYS + 1) * DAY_MS;
    let own = wallet.to_string();
    let series = daily_series(&state, &me, first, CHART_DAYS, |r| r.payer_account == own, |r| r.total).await?;
    let spend_today = series.last().copied().unwrap_or(0);
    let (y, m, _) = civil_from_days(today);
    let month_start = days_from_civil(y, m, 1) * DAY_MS;
    let month = daily_series(
        &state,
        &me,
        month_start,
        today - month_start / DAY_MS + 1,
        |r| r.payer_account == own,
        |r| r.total,
    )
    .await?
    .iter()
    .sum::<i64>();
    let filter = UsageFilter { developer_id: me.clone(), ..Default::default() };
    let recent = usage::records(&state, &filter, Paging { offset: 0, limit: RECENT_ROWS }).await?;
    let rows: Vec<String> = recent.items.iter().map(usage_row).collect();
    let card = |label: &str, value: String, id: &str| {
        format!("<div class=\"card\"><p class=\"label\">{label}</p><p class=\"value\" id=\"{id}\">{value}</p></div>")
    };
    let body = format!(
        "<h1>Overview</h1><div class=\"cards\">{}{}{}</div>\
         <section><h2>Spend, last {CHART_DAYS} days</h2>{}</section>\
         <h2>Recent requests</h2>{}<p><a href=\"/dashboard/usage\">All usage</a> · <a href=\"/dashboard/keys\">API keys</a></p>",
        card("Balance", usd(balance.get()), "balance"),
        card("Spend today", usd(spend_today), "spend-today"),
        card("Spend this month", usd(month), "spend-month"),
        chart::daily_bars("spend-chart", "Spend", first, &series),
        table(
            "Recent requests",
            USAGE_HEAD,
            &rows,
            "No requests yet. Create a Sandbox key and make a request to see it here."
        ),
    );
    Ok(html(StatusCode::OK, frame("Overview", "overview", Some(&dash), Flash::done(q.as_deref()).as_ref(), &body)))
}
