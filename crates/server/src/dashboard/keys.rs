//! API keys (SPEC §2, §11): create with a billing mode (`test` is **Sandbox**), the secret
//! shown once with a copy button, the per-key rate-limit override, rotate, revoke. Reads and
//! writes call [`crate::services::keys`], as the JSON API does, so the rules are the API's.

use super::layout::{button_form, csrf_field, escape, frame, mode_label, secret_box, table, td, when};
use super::{html, see_other, status_of, Dash, DashForm, Flash, PageResult};
use crate::app::SharedState;
use crate::error::ApiError;
use crate::services::keys::{self, KeyPatch, NewKey, RateLimit};
use crate::services::{apps, Name};
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;

/// What the create form last held (re-shown after an error).
#[derive(Default)]
struct Draft {
    name: String,
    mode: String,
    limit: String,
    app_id: String,
}

async fn render(
    state: &SharedState,
    dash: &Dash,
    flash: Option<Flash>,
    err: Option<ApiError>,
    reveal: Option<String>,
    draft: Draft,
) -> PageResult {
    let keys = keys::list(state, dash.user_id()).await?;
    let default_limit = state.config.rate_limit_per_minute;
    let apps = apps::list(state, dash.user_id()).await?;
    let app_options: String = apps
        .iter()
        .map(|a| {
            let sel = if a.id == draft.app_id { " selected" } else { "" };
            format!("<option value=\"{}\"{sel}>{}</option>", escape(&a.id), escape(&a.name))
        })
        .collect();
    let rows: Vec<String> = keys
        .iter()
        .map(|k| {
            let mode = if k.billing_mode.to_string() == "test" {
                "<td><span class=\"badge sandbox\">Sandbox</span></td>".to_string()
            } else {
                td(mode_label(&k.billing_mode.to_string()))
            };
            let (status, actions) = match k.revoked_at {
                Some(at) => (format!("<td><span class=\"badge bad\">Revoked {}</span></td>", escape(&when(at))), String::new()),
                None => (
                    "<td><span class=\"badge ok\">Active</span></td>".to_string(),
                    format!(
                        "<form method=\"post\" action=\"/dashboard/keys/{id}/limit\" class=\"inline\">{csrf}\
                         <label class=\"sr-only\" for=\"limit-{id}\">Requests per minute for {name}</label>\
                         <input id=\"limit-{id}\" name=\"rate_limit_per_minute\" inputmode=\"numeric\" size=\"7\" \
                         value=\"{value}\" placeholder=\"{default_limit}\"><button type=\"submit\" class=\"secondary\">Set limit</button></form>{}{}",
                        button_form(dash, &format!("/dashboard/keys/{}/rotate", k.id), "Rotate", "secondary"),
                        button_form(dash, &format!("/dashboard/keys/{}/revoke", k.id), "Revoke", "danger"),
                        id = escape(&k.id),
                        csrf = csrf_field(dash),
                        name = escape(&k.name),
                        value = k.rate_limit_per_minute.map(|l| l.to_string()).unwrap_or_default(),
                    ),
                ),
            };
            format!(
                "<tr>{}<td><code>{}…</code></td>{mode}{}{status}{}{}<td>{actions}</td></tr>",
                td(&k.name),
                escape(&k.prefix),
                td(&k.rate_limit_per_minute.map(|l| format!("{l}/min")).unwrap_or_else(|| format!("default ({default_limit}/min)"))),
                td(&when(k.created_at)),
                td(&k.last_used_at.map(when).unwrap_or_else(|| "never".into())),
            )
        })
        .collect();
    let selected = |m: &str| if draft.mode == m || (draft.mode.is_empty() && m == "test") { " selected" } else { "" };
    let reveal = reveal
        .map(|s| {
            secret_box(
                "Your new API key",
                "new-secret",
                &s,
                "Copy it now and keep it safe: Quota stores only its hash and will never show it again.",
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>API keys</h1>{reveal}<section><h2>Create a key</h2>\
         <form method=\"post\" action=\"/dashboard/keys\" class=\"stack\">{csrf}\
         <label for=\"key-name\">Name</label><input type=\"text\" id=\"key-name\" name=\"name\" maxlength=\"100\" required value=\"{name}\">\
         <label for=\"key-mode\">Billing mode <span class=\"hint\">Sandbox answers synthetically and charges your wallet the base price; \
         Developer calls the provider and charges your wallet; User charges your app's users (needs their OAuth token).</span></label>\
         <select id=\"key-mode\" name=\"billing_mode\"><option value=\"test\"{s_test}>Sandbox</option>\
         <option value=\"developer\"{s_dev}>Developer</option><option value=\"user\"{s_user}>User</option></select>\
         <label for=\"key-limit\">Rate limit, requests per minute <span class=\"hint\">Optional; empty means the default ({default_limit}).</span></label>\
         <input type=\"text\" id=\"key-limit\" name=\"rate_limit_per_minute\" inputmode=\"numeric\" value=\"{limit}\">\
         <label for=\"key-app\">App <span class=\"hint\">Optional: a key bound to one of your apps accepts only that app's user tokens.</span></label>\
         <select id=\"key-app\" name=\"app_id\"><option value=\"\">None</option>{app_options}</select>\
         <button type=\"submit\">Create key</button></form></section>\
         <h2>Your keys</h2>{table}",
        csrf = csrf_field(dash),
        name = escape(&draft.name),
        limit = escape(&draft.limit),
        s_test = selected("test"),
        s_dev = selected("developer"),
        s_user = selected("user"),
        table = table(
            "API keys",
            &["Name", "Key", "Mode", "Rate limit", "Status", "Created", "Last used", "Actions"],
            &rows,
            "No keys yet."
        ),
    );
    let flash = err.as_ref().map(Flash::from_api).or(flash);
    Ok(html(status_of(&err), frame("API keys", "keys", Some(dash), flash.as_ref(), &body)))
}

/// `GET /dashboard/keys`.
pub async fn page(State(state): State<SharedState>, dash: Dash, RawQuery(q): RawQuery) -> PageResult {
    render(&state, &dash, Flash::done(q.as_deref()), None, None, Draft::default()).await
}

/// A rate limit typed by a person: empty is "none", else a whole number.
fn parse_limit(text: &str) -> Result<Option<i64>, ApiError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<i64>()
        .map(Some)
        .map_err(|_| ApiError::bad_request("rate limit must be a whole number of requests per minute"))
}

/// `POST /dashboard/keys`: create, then show the secret once.
pub async fn create(State(state): State<SharedState>, f: DashForm) -> PageResult {
    let draft = Draft {
        name: f.form.get("name").to_string(),
        mode: f.form.get("billing_mode").to_string(),
        limit: f.form.get("rate_limit_per_minute").to_string(),
        app_id: f.form.get("app_id").to_string(),
    };
    let result = async {
        let limit = parse_limit(&draft.limit)?;
        let new = NewKey {
            name: Name::parse(&draft.name)?,
            billing_mode: keys::parse_mode(Some(&draft.mode))?,
            rate_limit: limit.map(RateLimit::parse).transpose()?,
            app_id: (!draft.app_id.is_empty()).then(|| draft.app_id.clone()),
        };
        keys::create(&state, f.dash.user_id(), new).await
    }
    .await;
    match result {
        Ok(issued) => render(&state, &f.dash, None, None, Some(issued.secret), Draft::default()).await,
        Err(e) => render(&state, &f.dash, None, Some(e), None, draft).await,
    }
}

/// `POST /dashboard/keys/:id/limit`: set (or clear, when empty) the per-key override.
pub async fn set_limit(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    let result = async {
        let limit = parse_limit(f.form.get("rate_limit_per_minute"))?.map(RateLimit::parse).transpose()?;
        keys::update(&state, f.dash.user_id(), &id, KeyPatch { rate_limit: Some(limit), ..KeyPatch::default() }).await
    }
    .await;
    match result {
        Ok(_) => Ok(see_other("/dashboard/keys?done=key_updated").into_response()),
        Err(e) => render(&state, &f.dash, None, Some(e), None, Draft::default()).await,
    }
}

/// `POST /dashboard/keys/:id/rotate`: a new secret (shown once); the old one stops working.
pub async fn rotate(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    match keys::rotate(&state, f.dash.user_id(), &id).await {
        Ok(issued) => {
            render(
                &state,
                &f.dash,
                Some(Flash::ok("Key rotated: the old secret no longer works.")),
                None,
                Some(issued.secret),
                Draft::default(),
            )
            .await
        }
        Err(e) => render(&state, &f.dash, None, Some(e), None, Draft::default()).await,
    }
}

/// `POST /dashboard/keys/:id/revoke`.
pub async fn revoke(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    match keys::revoke(&state, f.dash.user_id(), &id).await {
        Ok(_) => Ok(see_other("/dashboard/keys?done=key_revoked").into_response()),
        Err(e) => render(&state, &f.dash, None, Some(e), None, Draft::default()).await,
    }
}
