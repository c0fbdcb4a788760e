//! Usage and ledger (SPEC §9, §11). Usage: filters (dates, key, model, mode), a daily chart, a
//! paginated table and a CSV link to `GET /v1/usage?format=csv` (which takes the same session
//! cookie). Ledger: the transfers that touched the wallet and earnings, as `GET /v1/ledger`
//! shows them. Both read [`crate::services::usage`].

use super::layout::{escape, frame, mode_label, table, td, td_num, usd, when};
use super::overview::{daily_series, usage_row, USAGE_HEAD};
use super::{chart, html, status_of, Dash, Flash, PageResult};
use crate::app::SharedState;
use crate::error::ApiError;
use crate::routes::PageQuery;
use crate::services::usage::{self, parse_time, Direction};
use crate::services::{cursor_at, keys, Paging};
use axum::extract::{Query, State};
use quota_core::AccountId;
use quota_store::usage::{UsageFilter, DAY_MS};
use serde::Deserialize;

/// Rows per page of usage and ledger.
const PAGE_ROWS: usize = 50;
/// Longest period the usage chart draws, in days.
const CHART_DAYS_MAX: i64 = 92;

#[derive(Debug, Default, Deserialize)]
pub struct UsageForm {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    key_id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    mode: String,
    cursor: Option<String>,
}

/// Query parameters for `GET /v1/usage`.
type ApiParams = Vec<(&'static str, String)>;

impl UsageForm {
    /// The filter as `/v1/usage` parameters (`to` made exclusive: the form's is inclusive).
    fn api_params(&self) -> Result<(UsageFilter, ApiParams), ApiError> {
        let mut filter = UsageFilter::default();
        let mut params = Vec::new();
        if !self.from.is_empty() {
            filter.from = Some(parse_time("from", &self.from)?);
            params.push(("from", self.from.clone()));
        }
        if !self.to.is_empty() {
            let to = parse_time("to", &self.to)? + if self.to.len() == 10 { DAY_MS } else { 0 };
            filter.to = Some(to);
            params.push(("to", quota_store::clock::rfc3339(to)));
        }
        if let (Some(f), Some(t)) = (filter.from, filter.to) {
            if f >= t {
                return Err(ApiError::bad_request("the start date must not be after the end date"));
            }
        }
        if !self.key_id.is_empty() {
            filter.key_id = Some(self.key_id.clone());
            params.push(("key_id", self.key_id.clone()));
        }
        if !self.model.is_empty() {
            filter.model = Some(self.model.clone());
            params.push(("model", self.model.clone()));
        }
        if !self.mode.is_empty() {
            self.mode.parse::<quota_core::BillingMode>().map_err(|_| {
                ApiError::bad_request(format!("mode `{}` is not one of developer, user, sandbox (test)", self.mode))
            })?;
            filter.billing_mode = Some(self.mode.clone());
            params.push(("billing_mode", self.mode.clone()));
        }
        Ok((filter, params))
    }

    /// This page's query string with another cursor.
    fn query_with_cursor(&self, cursor: &str) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("from", &self.from),
            ("to", &self.to),
            ("key_id", &self.key_id),
            ("model", &self.model),
            ("mode", &self.mode),
        ] {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        s.append_pair("cursor", cursor);
        s.finish()
    }
}

fn encode(params: &[(&str, String)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

/// `GET /dashboard/usage`.
pub async fn usage_page(State(state): State<SharedState>, dash: Dash, Query(form): Query<UsageForm>) -> PageResult {
    let me = dash.user_id().to_string();
    let keys = keys::list(&state, &me).await?;
    let parsed = form.api_params().and_then(|(f, p)| {
        let page = PageQuery { limit: Some(PAGE_ROWS.to_string()), cursor: form.cursor.clone() };
        Ok((f, p, page.paging()?))
    });
    let (content, err) = match parsed {
        Err(e) => (String::new(), Some(e)),
        Ok((mut filter, params, paging)) => {
            filter.developer_id = me.clone();
            let Paging { offset, limit } = paging;
            let records = usage::records(&state, &filter, paging).await?;
            let more = records.next_cursor.is_some();
            let rows: Vec<String> = records.items.iter().map(usage_row).collect();
            // The chart: the filtered period (default the last 30 days), per day.
            let today_end = (state.clock.now_ms().div_euclid(DAY_MS) + 1) * DAY_MS;
            let end = filter.to.map(|t| (t + DAY_MS - 1).div_euclid(DAY_MS) * DAY_MS).unwrap_or(today_end);
            let start = filter.from.map(|f| f.div_euclid(DAY_MS) * DAY_MS).unwrap_or(end - 30 * DAY_MS);
            let start = start.max(end - CHART_DAYS_MAX * DAY_MS);
            let days = ((end - start) / DAY_MS).max(1);
            let f = &filter;
            let own = AccountId::wallet(&me).to_string();
            let series = daily_series(
                &state,
                &me,
                start,
                days,
                |r| {
                    f.key_id.as_ref().is_none_or(|k| *k == r.key_id)
                        && f.model.as_ref().is_none_or(|m| *m == r.model)
                        && f.from.is_none_or(|t| r.at >= t)
                        && f.to.is_none_or(|t| r.at < t)
                        && match f.billing_mode.as_deref() {
                            Some("test") => r.sandbox,
                            Some("developer") => !r.sandbox && r.payer_account == own,
                            Some("user") => !r.sandbox && r.payer_account != own,
                            _ => true,
                        }
                },
                |r| r.total,
            )
            .await?;
            let mut csv = vec![("format", "csv".to_string())];
            csv.extend(params.iter().cloned());
            let mut pager = String::new();
            if offset > 0 {
                let prev = offset.saturating_sub(limit);
                pager.push_str(&format!(
                    "<a href=\"/dashboard/usage?{}\" rel=\"prev\">← Newer</a>",
                    escape(&form.query_with_cursor(&cursor_at(prev)))
                ));
            }
            if more {
                pager.push_str(&format!(
                    "<a href=\"/dashboard/usage?{}\" rel=\"next\">Older →</a>",
                    escape(&form.query_with_cursor(&cursor_at(offset + limit)))
                ));
            }
            (
                format!(
                    "<section><h2>Charged per day</h2>{}</section>\
                     <p><a href=\"/v1/usage?{}\" download>Download CSV</a> <span class=\"muted\">(every matching request)</span></p>\
                     {}<nav class=\"pager\" aria-label=\"Pages\">{pager}</nav>",
                    chart::daily_bars("usage-chart", "Charged", start, &series),
                    escape(&encode(&csv)),
                    table("Usage records", USAGE_HEAD, &rows, "No requests match these filters."),
                ),
                None,
            )
        }
    };
    let key_options: String = keys
        .iter()
        .map(|k| {
            let sel = if k.id == form.key_id { " selected" } else { "" };
            format!("<option value=\"{}\"{sel}>{} ({}…)</option>", escape(&k.id), escape(&k.name), escape(&k.prefix))
        })
        .collect();
    let models: String =
        state.catalog.iter().map(|m| format!("<option value=\"{}\"></option>", escape(&m.id))).collect();
    let mode_options: String = ["developer", "user", "test"]
        .iter()
        .map(|m| {
            let sel = if *m == form.mode { " selected" } else { "" };
            format!("<option value=\"{m}\"{sel}>{}</option>", mode_label(m))
        })
        .collect();
    let body = format!(
        "<h1>Usage</h1><section><form method=\"get\" action=\"/dashboard/usage\" class=\"filters\" aria-label=\"Filters\">\
         <div class=\"field\"><label for=\"f-from\">From</label><input type=\"date\" id=\"f-from\" name=\"from\" value=\"{from}\"></div>\
         <div class=\"field\"><label for=\"f-to\">To (inclusive)</label><input type=\"date\" id=\"f-to\" name=\"to\" value=\"{to}\"></div>\
         <div class=\"field\"><label for=\"f-key\">Key</label><select id=\"f-key\" name=\"key_id\"><option value=\"\">All keys</option>{key_options}</select></div>\
         <div class=\"field\"><label for=\"f-model\">Model</label><input type=\"text\" id=\"f-model\" name=\"model\" list=\"models\" value=\"{model}\" size=\"18\"></div>\
         <datalist id=\"models\">{models}</datalist>\
         <div class=\"field\"><label for=\"f-mode\">Mode</label><select id=\"f-mode\" name=\"mode\"><option value=\"\">All modes</option>{mode_options}</select></div>\
         <button type=\"submit\">Apply</button> <a href=\"/dashboard/usage\">Clear</a></form></section>{content}",
        from = escape(&form.from),
        to = escape(&form.to),
        model = escape(&form.model),
    );
    let flash = err.as_ref().map(Flash::from_api);
    Ok(html(status_of(&err), frame("Usage", "usage", Some(&dash), flash.as_ref(), &body)))
}

/// A ledger account as the account holder reads it: their own accounts by name, others as
/// they are (`platform:revenue`, another user's wallet).
fn account_label(account: &str, me: &str) -> String {
    match account.strip_suffix(me).and_then(|k| k.strip_suffix(':')) {
        Some("wallet") => "Your wallet".to_string(),
        Some(kind) => format!("Your {}", kind.replace('_', " ")),
        None => account.to_string(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct LedgerForm {
    cursor: Option<String>,
}

/// `GET /dashboard/ledger`.
pub async fn ledger_page(State(state): State<SharedState>, dash: Dash, Query(q): Query<LedgerForm>) -> PageResult {
    let page_q = PageQuery { limit: Some(PAGE_ROWS.to_string()), cursor: q.cursor.clone() };
    let offset = page_q.parse().map(|(o, _)| o).unwrap_or(0);
    let me = dash.user_id().to_string();
    let result = match page_q.paging() {
        Ok(paging) => usage::ledger(&state, &me, paging).await,
        Err(e) => Err(e),
    };
    let (content, err) = match result {
        Err(e) => (String::new(), Some(e)),
        Ok(entries) => {
            let rows: Vec<String> = entries
                .items
                .iter()
                .map(|e| {
                    let t = &e.transfer;
                    let amount = t.amount.get();
                    let signed = if e.direction == Direction::Debit { -amount } else { amount };
                    format!(
                        "<tr>{}{}{}{}{}{}{}</tr>",
                        td(&when(t.created_at_ms)),
                        td(t.kind.as_str()),
                        td_num(&if signed > 0 { format!("+{}", usd(signed)) } else { usd(signed) }),
                        td(&account_label(&t.from.to_string(), &me)),
                        td(&account_label(&t.to.to_string(), &me)),
                        td(&t.cause),
                        td(&t.id),
                    )
                })
                .collect();
            let mut pager = String::new();
            if offset > 0 {
                pager.push_str(&format!(
                    "<a href=\"/dashboard/ledger?cursor={}\" rel=\"prev\">← Newer</a>",
                    cursor_at(offset.saturating_sub(PAGE_ROWS))
                ));
            }
            if let Some(next) = &entries.next_cursor {
                pager.push_str(&format!(
                    "<a href=\"/dashboard/ledger?cursor={}\" rel=\"next\">Older →</a>",
                    escape(next)
                ));
            }
            (
                format!(
                    "{}<nav class=\"pager\" aria-label=\"Pages\">{pager}</nav>",
                    table(
                        "Ledger",
                        &["Time", "Kind", "Amount", "From", "To", "Cause", "Transfer"],
                        &rows,
                        "No transfers yet."
                    )
                ),
                None,
            )
        }
    };
    let body = format!(
        "<h1>Ledger</h1><p class=\"muted\">Every transfer that touched your wallet or your earnings, newest first. \
         Amounts are signed from your side.</p>{content}"
    );
    let flash = err.as_ref().map(Flash::from_api);
    Ok(html(status_of(&err), frame("Ledger", "ledger", Some(&dash), flash.as_ref(), &body)))
}

#[cfg(test)]
mod tests {
    use super::account_label;

    #[test]
    fn own_accounts_read_as_yours() {
        assert_eq!(account_label("wallet:usr_1", "usr_1"), "Your wallet");
        assert_eq!(account_label("earnings_pending:usr_1", "usr_1"), "Your earnings pending");
        assert_eq!(account_label("wallet:usr_2", "usr_1"), "wallet:usr_2");
        assert_eq!(account_label("wallet:xusr_1", "usr_1"), "wallet:xusr_1");
        assert_eq!(account_label("platform:promotions", "usr_1"), "platform:promotions");
    }
}
