//! Webhooks (SPEC §8, §11): endpoints, create (the signing secret shown once), an endpoint's
//! deliveries with their status, replay, a test event, delete. Writes call
//! `crate::routes::webhooks`' handlers.

use super::layout::{button_form, csrf_field, escape, frame, rfc_when, secret_box, table, td, td_num, usd, when};
use super::{html, see_other, status_of, Dash, DashForm, Flash, PageResult};
use crate::app::SharedState;
use crate::error::{internal, ApiError};
use crate::routes::webhooks as api;
use crate::routes::PageQuery;
use crate::webhooks::EVENT_TYPES;
use axum::extract::{Path, Query, RawQuery, State};
use axum::response::IntoResponse;
use serde_json::{json, Value};

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
    let endpoints = state.store.webhook_endpoints(dash.user_id()).await.map_err(internal("dashboard webhooks"))?;
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
    let checks: String = EVENT_TYPES
        .iter()
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
        let mut body = json!({"url": draft.url, "description": draft.description});
        if !draft.events.is_empty() {
            body["events"] = json!(draft.events);
        }
        if !draft.threshold.is_empty() {
            body["low_balance_threshold"] = json!(parse_dollars("the low-balance threshold", &draft.threshold)?);
        }
        let bytes = axum::body::Bytes::from(body.to_string());
        let (_, axum::Json(v)) = api::create(State(state.clone()), f.dash.session(), bytes).await?;
        Ok::<_, ApiError>(v)
    }
    .await;
    match result {
        Ok(v) => {
            let secret = v["secret"].as_str().unwrap_or_default().to_string();
            let flash = Flash::ok(format!("Endpoint {} added.", v["url"].as_str().unwrap_or_default()));
            render(&state, &f.dash, Some(flash), None, Some(secret), Draft::default()).await
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
    let endpoint = match api::get(State(state.clone()), dash.session(), Path(id.clone())).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return Err(e.into()),
    };
    let page_q = PageQuery { limit: Some(DELIVERY_ROWS.to_string()), cursor: None };
    let axum::Json(deliveries) =
        api::deliveries(State(state.clone()), dash.session(), Path(id.clone()), Query(page_q)).await?;
    let rows: Vec<String> = deliveries["data"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| delivery_row(dash, &id, d))
        .collect();
    let threshold = endpoint["low_balance_threshold"].as_i64().map(usd).unwrap_or_else(|| "none".into());
    let events: Vec<&str> =
        endpoint["events"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
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
        url = escape(endpoint["url"].as_str().unwrap_or("")),
        desc = escape(endpoint["description"].as_str().unwrap_or("")),
        status = escape(endpoint["status"].as_str().unwrap_or("")),
        events = escape(&events.join(", ")),
        threshold = escape(&threshold),
        test = button_form(dash, &format!("/dashboard/webhooks/{id}/test"), "Send test event", ""),
        toggle = if endpoint["status"].as_str() == Some("disabled") {
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

fn delivery_row(dash: &Dash, endpoint_id: &str, d: &Value) -> String {
    let status = d["status"].as_str().unwrap_or("");
    let badge = match status {
        "succeeded" | "delivered" => "ok",
        "failed" | "abandoned" => "bad",
        _ => "",
    };
    let last = d["log"].as_array().and_then(|l| l.last());
    let last_text = match last {
        Some(a) => match (a["status_code"].as_i64(), a["error"].as_str()) {
            (Some(code), _) => format!("HTTP {code} in {} ms", a["latency_ms"].as_i64().unwrap_or(0)),
            (None, Some(e)) => e.to_string(),
            _ => String::new(),
        },
        None => "not attempted yet".into(),
    };
    let delivery_id = d["id"].as_str().unwrap_or("");
    format!(
        "<tr>{}<td><code>{}</code></td><td><span class=\"badge {badge}\">{}</span></td>{}{}{}<td>{}</td></tr>",
        td(&rfc_when(d["created_at"].as_str().unwrap_or(""))),
        escape(d["event_type"].as_str().unwrap_or("")),
        escape(status),
        td_num(&d["attempts"].as_i64().unwrap_or(0).to_string()),
        td(&last_text),
        td(&d["next_attempt_at"].as_str().map(rfc_when).unwrap_or_default()),
        button_form(
            dash,
            &format!("/dashboard/webhooks/{endpoint_id}/deliveries/{delivery_id}/replay"),
            "Replay",
            "secondary"
        ),
    )
}

/// `POST /dashboard/webhooks/:id/test`.
pub async fn send_test(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    let _accepted = api::test(State(state.clone()), f.dash.session(), Path(id.clone())).await?;
    Ok(see_other(&format!("/dashboard/webhooks/{id}?done=webhook_test")).into_response())
}

/// `POST /dashboard/webhooks/:id/deliveries/:delivery_id/replay`.
pub async fn replay(
    State(state): State<SharedState>,
    Path((id, delivery_id)): Path<(String, String)>,
    f: DashForm,
) -> PageResult {
    let _accepted = api::replay(State(state.clone()), f.dash.session(), Path((id.clone(), delivery_id))).await?;
    Ok(see_other(&format!("/dashboard/webhooks/{id}?done=webhook_replay")).into_response())
}

/// `POST /dashboard/webhooks/:id/rotate-secret`: a new secret, shown once.
pub async fn rotate_secret(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    let axum::Json(v) = api::rotate_secret(State(state.clone()), f.dash.session(), Path(id.clone())).await?;
    let secret = v["secret"].as_str().unwrap_or_default().to_string();
    render_detail(&state, &f.dash, id, Some(Flash::ok("Secret rotated.")), Some(secret)).await
}

/// `POST /dashboard/webhooks/:id/enable` and `/disable`.
async fn set_enabled(state: SharedState, id: String, f: DashForm, enabled: bool) -> PageResult {
    let body = axum::body::Bytes::from(json!({ "enabled": enabled }).to_string());
    let _endpoint = api::update(State(state.clone()), f.dash.session(), Path(id.clone()), body).await?;
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
    let _accepted = api::delete(State(state.clone()), f.dash.session(), Path(id)).await?;
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
