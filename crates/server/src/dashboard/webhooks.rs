//! Webhooks (SPEC §8, §11): endpoints, create (the signing secret shown once), an endpoint's
//! deliveries with their status, replay, a test event, delete. Reads and writes call
//! [`crate::services::webhooks`], as the JSON API does.

use super::layout::{button_form, csrf_field, escape, frame, secret_box, table, td, td_num, usd, when};
use super::{html, see_other, status_of, Dash, DashForm, Flash, PageResult};
use crate::app::SharedState;
use crate::error::ApiError;
use crate::services::webhooks::{self as service, parse_description, EndpointChanges, EndpointUrl, NewEndpoint};
use crate::services::Paging;
use crate::webhooks::events::{parse_subscription, subscribable_names};
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use quota_store::webhooks::DeliveryView;

/// Deliveries listed on an endpoint's page.
const DELIVERY_ROWS: usize = 50;

#[derive(Default)]
struct Draft {
    url: String,
    description: String,
    threshold: String,
    events: Vec<String>,
}

/// Dollars typed by a person (`5`, `5.25`, `$0.000001`) → credits, exactly.
pub fn parse_dollars(field: &str, text: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::bad_request(format!("{field} must be an amount in dollars, like 5 or 2.50"));
    let t = text.trim().trim_start_matches('$');
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > 6
        || int.len() > 9
    {
        return Err(bad());
    }
    let whole: i64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| bad())? };
    let micros: i64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    Ok(whole * quota_core::credits::CREDITS_PER_USD + micros)
}

async fn render(
    state: &SharedState,
    dash: &Dash,
    flash: Option<Flash>,
    err: Option<ApiError>,
    reveal: Option<String>,
    draft: Draft,
) -> PageResult {
    let endpoints = service::list(state, dash.user_id()).await?;
    let rows: Vec<String> = endpoints
        .iter()
        .map(|e| {
            let status = if e.disabled_at.is_some() {
                "<span class=\"badge bad\">Disabled</span>"
            } else {
                "<span class=\"badge ok\">Enabled</span>"
            };
            let events = if e.events.is_empty() { "all events".to_string() } else { e.events.join(", ") };
            format!(
                "<tr><td><a href=\"/dashboard/webhooks/{id}\">{url}</a></td>{}{}<td>{status}</td>{}</tr>",
                td(&e.description),
                td(&events),
                td(&when(e.created_at)),
                id = escape(&e.id),
                url = escape(&e.url),
            )
        })
        .collect();
    let checks: String = subscribable_names()
        .into_iter()
        .map(|t| {
            let checked = if draft.events.iter().any(|e| e == t) { " checked" } else { "" };
            format!("<label><input type=\"checkbox\" name=\"events\" value=\"{t}\"{checked}> {t}</label>")
        })
        .collect();
    let reveal = reveal
        .map(|s| {
            secret_box(
                "Signing secret",
                "new-secret",
                &s,
                "Use it to verify the X-Quota-Signature and webhook-signature headers. It is shown only now.",
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>Webhooks</h1>{reveal}<section><h2>Add an endpoint</h2>\
         <form method=\"post\" action=\"/dashboard/webhooks\" class=\"stack\">{csrf}\
         <label for=\"wh-url\">URL <span class=\"hint\">http(s); Quota POSTs signed JSON events to it.</span></label>\
         <input type=\"url\" id=\"wh-url\" name=\"url\" required value=\"{url}\" placeholder=\"https://example.com/quota/webhook\">\
         <label for=\"wh-desc\">Description <span class=\"hint\">Optional.</span></label>\
         <input type=\"text\" id=\"wh-desc\" name=\"description\" value=\"{desc}\">\
         <fieldset><legend>Events <span class=\"hint\">None checked means every event.</span></legend>{checks}</fieldset>\
         <label for=\"wh-threshold\">Low-balance alert below, in dollars <span class=\"hint\">Optional: sends balance.low.</span></label>\
         <input type=\"text\" id=\"wh-threshold\" name=\"low_balance_threshold\" inputmode=\"decimal\" value=\"{threshold}\">\
         <button type=\"submit\">Add endpoint</button></form></section><h2>Endpoints</h2>{table}",
        csrf = csrf_field(dash),
        url = escape(&draft.url),
        desc = escape(&draft.description),
        threshold = escape(&draft.threshold),
        table = table("Webhook endpoints", &["URL", "Description", "Events", "Status", "Created"], &rows, "No endpoints yet."),
    );
    let flash = err.as_ref().map(Flash::from_api).or(flash);
    Ok(html(status_of(&err), frame("Webhooks", "webhooks", Some(dash), flash.as_ref(), &body)))
}

/// `GET /dashboard/webhooks`.
pub async fn page(State(state): State<SharedState>, dash: Dash, RawQuery(q): RawQuery) -> PageResult {
    render(&state, &dash, Flash::done(q.as_deref()), None, None, Draft::default()).await
}

/// `POST /dashboard/webhooks`.
pub async fn create(State(state): State<SharedState>, f: DashForm) -> PageResult {
    let draft = Draft {
        url: f.form.get("url").to_string(),
        description: f.form.get("description").to_string(),
        threshold: f.form.get("low_balance_threshold").to_string(),
        events: f.form.all("events").into_iter().map(str::to_string).collect(),
    };
    let result = async {
        let threshold = match draft.threshold.as_str() {
            "" => None,
            t => Some(parse_dollars("the low-balance threshold", t)?),
        };
        let new = NewEndpoint {
            url: EndpointUrl::parse(&draft.url, state.config.webhook_allow_private_urls)?,
            description: parse_description(Some(draft.description.clone()))?.unwrap_or_default(),
            events: parse_subscription(&draft.events)?,
            low_balance_threshold: service::parse_threshold(threshold)?,
        };
        service::create(&state, f.dash.user_id(), new).await
    }
    .await;
    match result {
        Ok(issued) => {
            let flash = Flash::ok(format!("Endpoint {} added.", issued.endpoint.url));
            render(&state, &f.dash, Some(flash), None, Some(issued.secret), Draft::default()).await
        }
        Err(e) => render(&state, &f.dash, None, Some(e), None, draft).await,
    }
}

/// `GET /dashboard/webhooks/:id`: the endpoint and its deliveries.
pub async fn detail(
    State(state): State<SharedState>,
    dash: Dash,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> PageResult {
    render_detail(&state, &dash, id, Flash::done(q.as_deref()), None).await
}

async fn render_detail(
    state: &SharedState,
    dash: &Dash,
    id: String,
    flash: Option<Flash>,
    reveal: Option<String>,
) -> PageResult {
    let endpoint = service::get(state, dash.user_id(), &id).await?;
    let paging = Paging { offset: 0, limit: DELIVERY_ROWS };
    let deliveries = service::deliveries(state, dash.user_id(), &id, paging).await?;
    let rows: Vec<String> = deliveries.items.iter().map(|d| delivery_row(dash, &id, d)).collect();
    let threshold = endpoint.low_balance_threshold.map(usd).unwrap_or_else(|| "none".into());
    let events = service::subscribed(&endpoint);
    let disabled = endpoint.disabled_at.is_some();
    let body = format!(
        "<h1>Webhook endpoint</h1><section><p><strong>{url}</strong></p>\
         <p class=\"muted\">{desc}</p><p>Status: {status} · Events: {events} · Low-balance alert: {threshold}</p>\
         {reveal}{test} {toggle} {rotate} {delete}</section>\
         <h2>Deliveries</h2><p class=\"muted\">Newest first. Retries follow the schedule in the docs; a replay sends the same event again now.</p>{table}\
         <p><a href=\"/dashboard/webhooks/{id}\">Refresh</a> · <a href=\"/dashboard/webhooks\">All endpoints</a></p>",
        reveal = reveal
            .map(|s| {
                secret_box(
                    "New signing secret",
                    "new-secret",
                    &s,
                    "The old secret no longer signs deliveries. Copy this one now: it is shown only once.",
                )
            })
            .unwrap_or_default(),
        url = escape(&endpoint.url),
        desc = escape(&endpoint.description),
        status = if disabled { "disabled" } else { "enabled" },
        events = escape(&events.join(", ")),
        threshold = escape(&threshold),
        test = button_form(dash, &format!("/dashboard/webhooks/{id}/test"), "Send test event", ""),
        toggle = if disabled {
            button_form(dash, &format!("/dashboard/webhooks/{id}/enable"), "Enable", "secondary")
        } else {
            button_form(dash, &format!("/dashboard/webhooks/{id}/disable"), "Disable", "secondary")
        },
        rotate = button_form(dash, &format!("/dashboard/webhooks/{id}/rotate-secret"), "Rotate secret", "secondary"),
        delete = button_form(dash, &format!("/dashboard/webhooks/{id}/delete"), "Delete endpoint", "danger"),
        table = table(
            "Deliveries",
            &["Created", "Event", "Status", "Attempts", "Last response", "Next attempt", ""],
            &rows,
            "No deliveries yet. Send a test event to try the endpoint."
        ),
        id = escape(&id),
    );
    Ok(html(axum::http::StatusCode::OK, frame("Webhook endpoint", "webhooks", Some(dash), flash.as_ref(), &body)))
}

fn delivery_row(dash: &Dash, endpoint_id: &str, d: &DeliveryView) -> String {
    let badge = match d.state.as_str() {
        "succeeded" | "delivered" => "ok",
        "failed" | "abandoned" => "bad",
        _ => "",
    };
    let last_text = match d.log.last() {
        Some(a) => match (a.status_code, &a.error) {
            (Some(code), _) => format!("HTTP {code} in {} ms", a.latency_ms),
            (None, Some(e)) => e.clone(),
            _ => String::new(),
        },
        None => "not attempted yet".into(),
    };
    format!(
        "<tr>{}<td><code>{}</code></td><td><span class=\"badge {badge}\">{}</span></td>{}{}{}<td>{}</td></tr>",
        td(&when(d.created_at)),
        escape(&d.event_type),
        escape(&d.state),
        td_num(&d.attempts.to_string()),
        td(&last_text),
        td(&d.next_attempt_at.map(when).unwrap_or_default()),
        button_form(
            dash,
            &format!("/dashboard/webhooks/{endpoint_id}/deliveries/{}/replay", d.id),
            "Replay",
            "secondary"
        ),
    )
}

/// `POST /dashboard/webhooks/:id/test`.
pub async fn send_test(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    service::send_test(&state, f.dash.user_id(), &id).await?;
    Ok(see_other(&format!("/dashboard/webhooks/{id}?done=webhook_test")).into_response())
}

/// `POST /dashboard/webhooks/:id/deliveries/:delivery_id/replay`.
pub async fn replay(
    State(state): State<SharedState>,
    Path((id, delivery_id)): Path<(String, String)>,
    f: DashForm,
) -> PageResult {
    service::replay(&state, f.dash.user_id(), &id, &delivery_id).await?;
    Ok(see_other(&format!("/dashboard/webhooks/{id}?done=webhook_replay")).into_response())
}

/// `POST /dashboard/webhooks/:id/rotate-secret`: a new secret, shown once.
pub async fn rotate_secret(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    let issued = service::rotate_secret(&state, f.dash.user_id(), &id).await?;
    render_detail(&state, &f.dash, id, Some(Flash::ok("Secret rotated.")), Some(issued.secret)).await
}

/// `POST /dashboard/webhooks/:id/enable` and `/disable`.
async fn set_enabled(state: SharedState, id: String, f: DashForm, enabled: bool) -> PageResult {
    let changes = EndpointChanges { enabled: Some(enabled), ..Default::default() };
    service::update(&state, f.dash.user_id(), &id, changes).await?;
    let done = if enabled { "webhook_enabled" } else { "webhook_disabled" };
    Ok(see_other(&format!("/dashboard/webhooks/{id}?done={done}")).into_response())
}

pub async fn enable(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    set_enabled(state, id, f, true).await
}

pub async fn disable(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    set_enabled(state, id, f, false).await
}

/// `POST /dashboard/webhooks/:id/delete`.
pub async fn delete(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    service::delete(&state, f.dash.user_id(), &id).await?;
    Ok(see_other("/dashboard/webhooks?done=webhook_deleted").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_parse_exactly() {
        assert_eq!(parse_dollars("x", "5").unwrap(), 5_000_000);
        assert_eq!(parse_dollars("x", "$2.50").unwrap(), 2_500_000);
        assert_eq!(parse_dollars("x", ".000001").unwrap(), 1);
        for bad in ["", "-1", "1.2345678", "abc", "1,5", "."] {
            assert!(parse_dollars("x", bad).is_err(), "{bad}");
        }
    }
}
