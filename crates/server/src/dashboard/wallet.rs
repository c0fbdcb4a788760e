//! The wallet holder's view (SPEC §6, §10.1, §11): balance, top-up packages (to checkout), and
//! the apps connected to this wallet with what was spent through each, and disconnect. Calls
//! [`crate::services::payments::checkout`] and [`crate::services::apps::disconnect`].

use super::layout::{button_form, escape, frame, table, td, td_num, usd, when};
use super::{html, see_other, Dash, DashForm, Flash, PageResult};
use crate::app::SharedState;
use crate::services::payments::{self, CheckoutStart};
use crate::services::{accounts, apps};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

async fn render(state: &SharedState, dash: &Dash, status: StatusCode, flash: Option<Flash>) -> PageResult {
    let me = dash.user_id();
    let balance = accounts::balance(state, me).await?;
    let connections = apps::connections(state, me).await?;
    let rows: Vec<String> = connections
        .iter()
        .map(|c| {
            format!(
                "<tr>{}{}{}{}<td>{}</td></tr>",
                td(&c.app_name),
                td_num(&usd(c.spend)),
                td(&c.scopes),
                td(&when(c.created_at)),
                button_form(
                    dash,
                    &format!("/dashboard/wallet/connections/{}/disconnect", c.app_id),
                    "Disconnect",
                    "danger"
                ),
            )
        })
        .collect();
    let packages = if state.payments.is_none() {
        "<p class=\"muted\">Top-ups are not configured on this Quota server (no payment provider).</p>".to_string()
    } else {
        let items: String = state
            .config
            .packages
            .iter()
            .map(|p| {
                format!(
                    "<div class=\"card\"><p class=\"label\">{name}</p><p class=\"value\">{price}</p>\
                     <p class=\"muted\">{credit} of credit</p>\
                     <form method=\"post\" action=\"/dashboard/wallet/checkout\">{csrf}\
                     <input type=\"hidden\" name=\"package_id\" value=\"{id}\">\
                     <button type=\"submit\" aria-label=\"Buy {name} for {price}\">Buy</button></form></div>",
                    name = escape(&p.name),
                    id = escape(&p.id),
                    price = quota_core::credits::cents_to_usd(p.price_cents),
                    credit = usd(p.credits),
                    csrf = super::layout::csrf_field(dash),
                )
            })
            .collect();
        format!("<div class=\"cards packages\">{items}</div>")
    };
    let body = format!(
        "<h1>Wallet</h1><div class=\"cards\"><div class=\"card\"><p class=\"label\">Balance</p>\
         <p class=\"value\" id=\"wallet-balance\">{}</p><p class=\"muted\">One wallet for your own keys and every app you connect.</p></div></div>\
         <section><h2>Top up</h2>{packages}</section><h2>Connected apps</h2>{}",
        usd(balance.get()),
        table(
            "Connected apps",
            &["App", "Spent through it", "Permissions", "Connected", ""],
            &rows,
            "No apps are connected to your wallet."
        ),
    );
    Ok(html(status, frame("Wallet", "wallet", Some(dash), flash.as_ref(), &body)))
}

/// `GET /dashboard/wallet`.
pub async fn page_handler(State(state): State<SharedState>, dash: Dash, RawQuery(q): RawQuery) -> PageResult {
    let flash = match url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()).find(|(k, _)| k == "topup") {
        Some((_, v)) if v == "success" => {
            Some(Flash::ok("Payment received: the credits appear as soon as the payment provider confirms it."))
        }
        Some((_, v)) if v == "cancelled" => Some(Flash::error("Top-up cancelled: nothing was charged.")),
        _ => Flash::done(q.as_deref()),
    };
    render(&state, &dash, StatusCode::OK, flash).await
}

/// `POST /dashboard/wallet/checkout`: a checkout session, then off to pay.
pub async fn checkout(State(state): State<SharedState>, f: DashForm) -> PageResult {
    let base = crate::oauth::issuer(&state.config, &f.headers);
    let success_url = format!("{base}/dashboard/wallet?topup=success");
    let cancel_url = format!("{base}/dashboard/wallet?topup=cancelled");
    let start = CheckoutStart {
        user_id: f.dash.user_id(),
        package_id: f.form.get("package_id"),
        success_url: &success_url,
        cancel_url: &cancel_url,
        base_url: &base,
    };
    let result = payments::checkout(&state, start).await.map(|c| c.checkout_url);
    match result {
        Ok(url) => Ok(see_other(&url).into_response()),
        Err(e) => render(&state, &f.dash, e.status, Some(Flash::from_api(&e))).await,
    }
}

/// `POST /dashboard/wallet/connections/:app_id/disconnect`.
pub async fn disconnect(State(state): State<SharedState>, Path(app_id): Path<String>, f: DashForm) -> PageResult {
    match apps::disconnect(&state, f.dash.user_id(), &app_id).await {
        Ok(_) => Ok(see_other("/dashboard/wallet?done=disconnected").into_response()),
        Err(e) => render(&state, &f.dash, e.status, Some(Flash::from_api(&e))).await,
    }
}
