//! Earnings and payouts (SPEC §10.2, §10.3, §11): pending, eligible, available, reserve, in
//! transit, paid, the payout history, and the Stripe Connect onboarding button. The figures are
//! `GET /developers/earnings`' and `GET /developers/payouts`' ([`crate::services::payments`]).

use super::layout::{button_form, escape, frame, table, td, td_num, usd, when};
use super::{html, see_other, Dash, DashForm, Flash, PageResult};
use crate::app::SharedState;
use crate::services::payments;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

/// Payouts listed.
const PAYOUT_ROWS: usize = 100;

/// `GET /dashboard/payouts`.
pub async fn page(State(state): State<SharedState>, dash: Dash, RawQuery(q): RawQuery) -> PageResult {
    let e = payments::earnings(&state, dash.user_id()).await?;
    let payouts = payments::payouts(&state, dash.user_id()).await?;
    let card = |label: &str, value: i64, note: &str| {
        format!(
            "<div class=\"card\"><p class=\"label\">{label}</p><p class=\"value\">{}</p><p class=\"muted\">{note}</p></div>",
            usd(value)
        )
    };
    let rows: Vec<String> = payouts
        .iter()
        .take(PAYOUT_ROWS)
        .map(|po| {
            format!(
                "<tr>{}{}{}{}{}</tr>",
                td(&when(po.created_at)),
                td(&po.status),
                td_num(&usd(po.amount_credits)),
                td(&po.paid_at.map(when).unwrap_or_default()),
                td(po.failure_message.as_deref().or(po.stripe_transfer_id.as_deref()).unwrap_or("")),
            )
        })
        .collect();
    let onboarded = e.stripe_account_id.as_deref();
    let connect = match (&state.payments, onboarded) {
        (None, _) => {
            "<p class=\"muted\">Payouts are not configured on this Quota server (no payment provider).</p>".to_string()
        }
        (Some(_), Some(acct)) => format!(
            "<p>Stripe account <code>{}</code> is connected.</p>{}",
            escape(acct),
            button_form(&dash, "/dashboard/payouts/onboard", "Update payout details on Stripe", "secondary")
        ),
        (Some(_), None) => format!(
            "<p>Connect a Stripe account to receive payouts.</p>{}",
            button_form(&dash, "/dashboard/payouts/onboard", "Set up payouts with Stripe", "")
        ),
    };
    let flash = match url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()).find(|(k, _)| k == "connect") {
        Some((_, v)) if v == "return" => Some(Flash::ok("Back from Stripe: your payout details are saved there.")),
        Some((_, v)) if v == "refresh" => {
            Some(Flash::error("That Stripe link expired. Start again with the button below."))
        }
        _ => Flash::done(q.as_deref()),
    };
    let body = format!(
        "<h1>Earnings and payouts</h1><p class=\"muted\">You earn the markup on your apps' user-mode requests. \
         Earnings become available 7 days after the request; each payout holds back 10% as a reserve for 90 days; \
         nothing under {min} is paid (it carries over).</p>\
         <div class=\"cards\">{}{}{}{}{}{}</div><section><h2>Payout account</h2>{connect}</section>\
         <h2>Payout history</h2>{}",
        card("Pending", e.pending, "Earned, not yet eligible"),
        card("Eligible now", e.pending_eligible, "Pending older than 7 days"),
        card("Available", e.available, "Paid out in the next batch"),
        card("Reserve", e.reserve, "Released after 90 days"),
        card("In transit", e.in_transit, "Sent to Stripe"),
        card("Paid", e.paid, "All time"),
        table("Payouts", &["Created", "Status", "Amount", "Paid", "Reference"], &rows, "No payouts yet."),
        min = usd(e.minimum_payout.get()),
    );
    Ok(html(StatusCode::OK, super::layout::frame("Earnings", "payouts", Some(&dash), flash.as_ref(), &body)))
}

/// `POST /dashboard/payouts/onboard`: to Stripe's onboarding (or the dev provider's return).
pub async fn onboard(State(state): State<SharedState>, f: DashForm) -> PageResult {
    let base_url = crate::oauth::issuer(&state.config, &f.headers);
    match payments::connect_onboard(&state, f.dash.user_id(), &f.dash.session.user.email, &base_url).await {
        Ok(onboarding) => Ok(see_other(&onboarding.url).into_response()),
        Err(e) => {
            let body = "<h1>Earnings and payouts</h1><p><a href=\"/dashboard/payouts\">Back to earnings</a></p>";
            Ok(html(e.status, frame("Earnings", "payouts", Some(&f.dash), Some(&Flash::from_api(&e)), body)))
        }
    }
}
