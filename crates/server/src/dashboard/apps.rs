//! OAuth apps (SPEC §5, §11): create (client secret shown once), redirect URIs, scopes, the
//! markup (`profit_margin`) with an example of what a user pays — computed here with the money
//! core's own `Price::cost` and `Margin::markup_on`, updated live by the page script as the
//! markup is typed — welcome credits, and the connected users. Reads and writes call
//! [`crate::services::apps`], as the JSON API does.

use super::layout::{csrf_field, escape, frame, percent, secret_box, table, td, td_num, usd, when};
use super::webhooks::parse_dollars;
use super::{html, see_other, status_of, Dash, DashForm, Flash, PageResult};
use crate::app::SharedState;
use crate::error::ApiError;
use crate::oauth::{Scope, Scopes};
use crate::services::apps::{self, AllowedScopes, AppPatch, AppSettings, NewApp, RedirectUris, WelcomeCredits};
use crate::services::Name;
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use quota_core::{Credits, Margin};

/// The scopes a new app's form starts with (the API's default set).
const DEFAULT_SCOPES: &[&str] = &["openid", "profile", "email", "credits.read", "credits.spend"];
/// The example request priced on an app's page.
const EXAMPLE_MODEL: &str = "gpt-4o-mini";
const EXAMPLE_INPUT_TOKENS: u64 = 1_000;
const EXAMPLE_OUTPUT_TOKENS: u64 = 500;

/// A markup typed as a percentage (`25`, `12.5`, `0.01`) → the API's decimal (`0.25`).
pub fn percent_to_margin(text: &str) -> Result<Margin, ApiError> {
    let bad = || ApiError::bad_request("markup must be a percentage from 0 to 1000, with at most two decimals");
    let t = text.trim().trim_end_matches('%').trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty()
        || int.len() > 4
        || frac.len() > 2
        || !(int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()))
    {
        return Err(bad());
    }
    let bps: u32 =
        int.parse::<u32>().map_err(|_| bad())? * 100 + format!("{frac:0<2}").parse::<u32>().map_err(|_| bad())?;
    Margin::from_bps(bps).map_err(|_| bad())
}

/// Scope checkboxes, `checked` ticked.
fn scope_boxes(checked: &[String]) -> String {
    Scope::ALL
        .iter()
        .map(|s| {
            let name = s.as_str();
            let on = if checked.iter().any(|c| c == name) { " checked" } else { "" };
            format!(
                "<label title=\"{desc}\"><input type=\"checkbox\" name=\"scopes\" value=\"{name}\"{on}> {name}</label>",
                desc = escape(s.describe())
            )
        })
        .collect()
}

/// The redirect URIs typed one per line.
fn uri_lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

#[derive(Default)]
struct Draft {
    name: String,
    uris: String,
    scopes: Vec<String>,
    markup: String,
    public: bool,
}

async fn render_list(
    state: &SharedState,
    dash: &Dash,
    flash: Option<Flash>,
    err: Option<ApiError>,
    reveal: Option<(String, Option<String>)>,
    draft: Option<Draft>,
) -> PageResult {
    let apps = apps::list(state, dash.user_id()).await?;
    let rows: Vec<String> = apps
        .iter()
        .map(|a| {
            format!(
                "<tr><td><a href=\"/dashboard/apps/{}\">{}</a></td><td><code>{}</code></td>{}{}</tr>",
                escape(&a.id),
                escape(&a.name),
                escape(&a.client_id),
                td(&percent(Margin::from_bps(a.profit_margin_bps).unwrap_or(Margin::ZERO))),
                td(&when(a.created_at)),
            )
        })
        .collect();
    let draft = draft.unwrap_or_else(|| Draft {
        scopes: DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
        markup: "0".into(),
        ..Default::default()
    });
    let reveal = match reveal {
        Some((client_id, Some(secret))) => format!(
            "{}<p>Client id: <code>{}</code></p>",
            secret_box(
                "Client secret",
                "new-secret",
                &secret,
                "Your app's client_secret for the token endpoint. Copy it now: it is shown only once."
            ),
            escape(&client_id)
        ),
        Some((client_id, None)) => {
            format!("<div class=\"flash ok\" role=\"status\">Public client created: client id <code>{}</code> (PKCE, no secret).</div>", escape(&client_id))
        }
        None => String::new(),
    };
    let body = format!(
        "<h1>Apps</h1><p class=\"muted\">OAuth apps let your users pay for their own requests from their Quota wallet, \
         at the base price plus your markup, which you earn.</p>{reveal}\
         <section><h2>Create an app</h2><form method=\"post\" action=\"/dashboard/apps\" class=\"stack\">{csrf}\
         <label for=\"app-name\">Name</label><input type=\"text\" id=\"app-name\" name=\"name\" maxlength=\"100\" required value=\"{name}\">\
         <label for=\"app-uris\">Redirect URIs <span class=\"hint\">One per line; https, or http://localhost for development.</span></label>\
         <textarea id=\"app-uris\" name=\"redirect_uris\" rows=\"3\" required>{uris}</textarea>\
         <fieldset><legend>Scopes the app may ask for</legend>{scopes}</fieldset>\
         <label for=\"markup_percent\">Markup, % <span class=\"hint\">Added to the base price of each of your users' requests; 0 to 1000.</span></label>\
         <input type=\"text\" id=\"markup_percent\" name=\"markup_percent\" inputmode=\"decimal\" value=\"{markup}\" size=\"8\">\
         <label><input type=\"checkbox\" name=\"public\" value=\"1\"{public}> Public client (a browser or mobile app: PKCE, no secret)</label>\
         <button type=\"submit\">Create app</button></form></section>\
         <h2>Your apps</h2>{table}",
        csrf = csrf_field(dash),
        name = escape(&draft.name),
        uris = escape(&draft.uris),
        scopes = scope_boxes(&draft.scopes),
        markup = escape(&draft.markup),
        public = if draft.public { " checked" } else { "" },
        table = table("Apps", &["Name", "Client id", "Markup", "Created"], &rows, "No apps yet."),
    );
    let flash = err.as_ref().map(Flash::from_api).or(flash);
    Ok(html(status_of(&err), frame("Apps", "apps", Some(dash), flash.as_ref(), &body)))
}

/// `GET /dashboard/apps`.
pub async fn page(State(state): State<SharedState>, dash: Dash, RawQuery(q): RawQuery) -> PageResult {
    render_list(&state, &dash, Flash::done(q.as_deref()), None, None, None).await
}

/// `POST /dashboard/apps`.
pub async fn create(State(state): State<SharedState>, f: DashForm) -> PageResult {
    let draft = Draft {
        name: f.form.get("name").to_string(),
        uris: f.form.get("redirect_uris").to_string(),
        scopes: f.form.all("scopes").into_iter().map(str::to_string).collect(),
        markup: f.form.get("markup_percent").to_string(),
        public: !f.form.get("public").is_empty(),
    };
    let result = async {
        let margin = if draft.markup.is_empty() { Margin::ZERO } else { percent_to_margin(&draft.markup)? };
        let new = NewApp {
            name: Name::parse(&draft.name)?,
            redirect_uris: RedirectUris::parse(uri_lines(&draft.uris))?,
            allowed_scopes: Some(AllowedScopes::parse(&draft.scopes)?),
            public: draft.public,
            margin,
            welcome_credits: WelcomeCredits::parse(0)?,
        };
        apps::create(&state, f.dash.user_id(), new).await
    }
    .await;
    match result {
        Ok(created) => {
            let flash = Flash::ok(format!("App {} created.", created.app.name));
            let reveal = (created.app.client_id, created.client_secret);
            render_list(&state, &f.dash, Some(flash), None, Some(reveal), None).await
        }
        Err(e) => render_list(&state, &f.dash, None, Some(e), None, Some(draft)).await,
    }
}

/// What a user pays for `base` under `margin`.
fn with_markup(base: Credits, margin: Margin) -> Credits {
    margin.with_markup(base)
}

/// The example: a priced request and one dollar of base usage, each with the markup.
fn example(state: &SharedState, margin: Margin) -> String {
    let mut lines = Vec::new();
    if let Some(m) = state.catalog.get(EXAMPLE_MODEL) {
        let base = m.price.cost(&quota_core::price::Usage {
            input_tokens: EXAMPLE_INPUT_TOKENS,
            output_tokens: EXAMPLE_OUTPUT_TOKENS,
            ..Default::default()
        });
        lines.push((
            format!(
                "A {EXAMPLE_MODEL} request of {EXAMPLE_INPUT_TOKENS} input and {EXAMPLE_OUTPUT_TOKENS} output tokens"
            ),
            base,
        ));
    }
    lines.push((
        "Requests worth $1.00 at the base price".to_string(),
        Credits::new(quota_core::credits::CREDITS_PER_USD),
    ));
    let items: String = lines
        .iter()
        .enumerate()
        .map(|(i, (what, base))| {
            format!(
                "<li data-base-credits=\"{b}\" data-total-id=\"example-total-{i}\">{what}: base {base_usd}, \
                 your user pays <strong id=\"example-total-{i}\">{total}</strong></li>",
                b = base.get(),
                what = escape(what),
                base_usd = usd(base.get()),
                total = usd(with_markup(*base, margin).get()),
            )
        })
        .collect();
    format!(
        "<div class=\"example\" aria-live=\"polite\"><p>With a markup of {}:</p><ul>{items}</ul></div>",
        percent(margin)
    )
}

async fn render_detail(
    state: &SharedState,
    dash: &Dash,
    id: &str,
    flash: Option<Flash>,
    err: Option<ApiError>,
    markup_draft: Option<String>,
) -> PageResult {
    let app = apps::get(state, dash.user_id(), id).await?;
    let margin = Margin::from_bps(app.profit_margin_bps).unwrap_or(Margin::ZERO);
    let users = apps::users(state, dash.user_id(), &app.id).await?;
    let rows: Vec<String> = users
        .iter()
        .map(|u| {
            // Only what the user granted (SPEC §5): the email with `email`, the balance with
            // `credits.read`; otherwise the user's id and "—".
            let (email, balance) = apps::visible(u);
            format!(
                "<tr>{}{}{}{}{}</tr>",
                td(email.unwrap_or(&u.user_id)),
                td_num(&balance.map(usd).unwrap_or_else(|| "—".into())),
                td_num(&usd(u.spend)),
                td(&u.scopes),
                td(&when(u.connected_at))
            )
        })
        .collect();
    let scopes: Vec<String> =
        Scopes::parse(&app.allowed_scopes).unwrap_or_default().iter().map(|s| s.as_str().to_string()).collect();
    let markup_value = markup_draft.unwrap_or_else(|| margin.to_percent_number());
    let body = format!(
        "<h1>{name}</h1><p>Client id <code>{client_id}</code> · {kind} · created {created}</p>\
         <div class=\"grid2\"><section><h2>Markup</h2>{example}\
         <form method=\"post\" action=\"/dashboard/apps/{id}/settings\" class=\"stack\">{csrf}\
         <label for=\"markup_percent\">Markup, % <span class=\"hint\">0 to 1000, at most two decimals.</span></label>\
         <input type=\"text\" id=\"markup_percent\" name=\"markup_percent\" inputmode=\"decimal\" value=\"{markup}\" size=\"8\">\
         <label for=\"welcome\">Welcome credits per new user, in dollars <span class=\"hint\">Paid from your wallet once per user; 0 for none.</span></label>\
         <input type=\"text\" id=\"welcome\" name=\"welcome_credits\" inputmode=\"decimal\" value=\"{welcome}\" size=\"10\">\
         <button type=\"submit\">Save markup</button></form></section>\
         <section><h2>OAuth settings</h2><form method=\"post\" action=\"/dashboard/apps/{id}\" class=\"stack\">{csrf}\
         <label for=\"app-name\">Name</label><input type=\"text\" id=\"app-name\" name=\"name\" maxlength=\"100\" required value=\"{name}\">\
         <label for=\"app-uris\">Redirect URIs <span class=\"hint\">One per line.</span></label>\
         <textarea id=\"app-uris\" name=\"redirect_uris\" rows=\"3\" required>{uris}</textarea>\
         <fieldset><legend>Scopes</legend>{scope_boxes}</fieldset><button type=\"submit\">Save settings</button></form></section></div>\
         <h2>Connected users</h2>{users}<section><h2>Delete this app</h2><p>Every connected user is disconnected and every token it \
         issued stops working at once.</p>{delete}</section><p><a href=\"/dashboard/apps\">All apps</a></p>",
        delete = super::layout::button_form(dash, &format!("/dashboard/apps/{}/delete", app.id), "Delete app", "danger"),
        id = escape(&app.id),
        name = escape(&app.name),
        client_id = escape(&app.client_id),
        kind = if app.is_public() { "public client (PKCE)" } else { "confidential client" },
        created = escape(&when(app.created_at)),
        example = example(state, margin),
        csrf = csrf_field(dash),
        markup = escape(&markup_value),
        welcome = escape(usd(app.welcome_credits).trim_start_matches('$')),
        uris = escape(&app.redirect_uris.join("\n")),
        scope_boxes = scope_boxes(&scopes),
        users = table(
            "Connected users",
            &["User", "Balance", "Spent through this app", "Scopes", "Connected"],
            &rows,
            "No users have connected yet."
        ),
    );
    let flash = err.as_ref().map(Flash::from_api).or(flash);
    Ok(html(status_of(&err), frame(&app.name, "apps", Some(dash), flash.as_ref(), &body)))
}

/// `GET /dashboard/apps/:id`.
pub async fn detail(
    State(state): State<SharedState>,
    dash: Dash,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> PageResult {
    render_detail(&state, &dash, &id, Flash::done(q.as_deref()), None, None).await
}

/// `POST /dashboard/apps/:id`: name, redirect URIs, scopes.
pub async fn update(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    let result = async {
        let scopes: Vec<String> = f.form.all("scopes").into_iter().map(str::to_string).collect();
        let patch = AppPatch {
            name: Some(Name::parse(f.form.get("name"))?),
            redirect_uris: Some(RedirectUris::parse(uri_lines(f.form.get("redirect_uris")))?),
            allowed_scopes: Some(AllowedScopes::parse(&scopes)?),
        };
        apps::update(&state, f.dash.user_id(), &id, patch).await
    }
    .await;
    match result {
        Ok(_) => Ok(see_other(&format!("/dashboard/apps/{id}?done=app_updated")).into_response()),
        Err(e) => render_detail(&state, &f.dash, &id, None, Some(e), None).await,
    }
}

/// `POST /dashboard/apps/:id/settings`: markup and welcome credits.
pub async fn settings(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    let markup = f.form.get("markup_percent").to_string();
    let result = async {
        let margin = percent_to_margin(&markup)?;
        let welcome = f.form.get("welcome_credits");
        let welcome_credits = if welcome.is_empty() {
            None
        } else {
            Some(WelcomeCredits::parse(parse_dollars("welcome credits", welcome)?)?)
        };
        apps::settings(&state, f.dash.user_id(), &id, AppSettings { margin: Some(margin), welcome_credits }).await
    }
    .await;
    match result {
        Ok(_) => Ok(see_other(&format!("/dashboard/apps/{id}?done=settings_updated")).into_response()),
        Err(e) => render_detail(&state, &f.dash, &id, None, Some(e), Some(markup)).await,
    }
}

/// `POST /dashboard/apps/:id/delete`.
pub async fn delete(State(state): State<SharedState>, Path(id): Path<String>, f: DashForm) -> PageResult {
    match apps::delete(&state, f.dash.user_id(), &id).await {
        Ok(_) => Ok(see_other("/dashboard/apps?done=app_deleted").into_response()),
        Err(e) => render_detail(&state, &f.dash, &id, None, Some(e), None).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_become_exact_margins() {
        assert_eq!(percent_to_margin("25").unwrap().bps(), 2500);
        assert_eq!(percent_to_margin("12.5%").unwrap().bps(), 1250);
        assert_eq!(percent_to_margin("0.01").unwrap().bps(), 1);
        assert_eq!(percent_to_margin("1000").unwrap().bps(), 100_000);
        for bad in ["", "-5", "1001", "1.234", "abc", "1e2"] {
            assert!(percent_to_margin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_example_uses_the_money_core() {
        let m = Margin::from_bps(2500).unwrap();
        assert_eq!(with_markup(Credits::new(450), m), Credits::new(563));
        assert_eq!(with_markup(Credits::new(1_000_000), m), Credits::new(1_250_000));
    }
}
