//! The dashboard (SPEC §11): server-rendered HTML at `/dashboard` for developers and wallet
//! holders, signed in with the same `quota_session` cookie as the API.
//!
//! Every page works without JavaScript: plain forms, POST-redirect-GET, messages on the page.
//! One small same-origin script (`/dashboard/static/app.js`) adds copy buttons, the chart's
//! hover readout and the live markup example. Reads and writes call the same services the JSON
//! API calls (`crate::services::*`), with typed inputs parsed from the forms and typed results,
//! so validation, events and ledger effects are the API's. Nothing here holds business rules.
//!
//! Every form carries a CSRF token (an HMAC of the session, [`crate::oauth::csrf::Csrf`]),
//! checked by the [`DashForm`] extractor before a handler runs; sign-in and sign-up bind theirs
//! to a pre-session cookie. A missing or expired session redirects to the sign-in page.

mod apps;
mod chart;
mod keys;
mod layout;
mod overview;
mod payouts;
mod signin;
mod usage;
mod wallet;
mod webhooks;

use crate::app::SharedState;
use crate::auth::{browser_session, SessionUser};
use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
pub use layout::{escape, usd};

/// Largest form body the dashboard reads.
const FORM_MAX_BYTES: usize = 64 * 1024;
/// The CSRF purpose of signed-in forms.
const CSRF_PURPOSE: &str = "dashboard";

pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/dashboard", get(overview::page))
        .route("/dashboard/", get(overview::page))
        .route("/dashboard/static/app.css", get(layout::css))
        .route("/dashboard/static/app.js", get(layout::js))
        .route("/dashboard/static/favicon.svg", get(layout::favicon))
        .route("/dashboard/signin", get(signin::signin_page).post(signin::signin))
        .route("/dashboard/signup", get(signin::signup_page).post(signin::signup))
        .route("/dashboard/signout", post(signin::signout))
        .route("/dashboard/keys", get(keys::page).post(keys::create))
        .route("/dashboard/keys/{id}/limit", post(keys::set_limit))
        .route("/dashboard/keys/{id}/rotate", post(keys::rotate))
        .route("/dashboard/keys/{id}/revoke", post(keys::revoke))
        .route("/dashboard/usage", get(usage::usage_page))
        .route("/dashboard/ledger", get(usage::ledger_page))
        .route("/dashboard/webhooks", get(webhooks::page).post(webhooks::create))
        .route("/dashboard/webhooks/{id}", get(webhooks::detail))
        .route("/dashboard/webhooks/{id}/test", post(webhooks::send_test))
        .route("/dashboard/webhooks/{id}/delete", post(webhooks::delete))
        .route("/dashboard/webhooks/{id}/rotate-secret", post(webhooks::rotate_secret))
        .route("/dashboard/webhooks/{id}/enable", post(webhooks::enable))
        .route("/dashboard/webhooks/{id}/disable", post(webhooks::disable))
        .route("/dashboard/webhooks/{id}/deliveries/{delivery_id}/replay", post(webhooks::replay))
        .route("/dashboard/apps", get(apps::page).post(apps::create))
        .route("/dashboard/apps/{id}", get(apps::detail).post(apps::update))
        .route("/dashboard/apps/{id}/settings", post(apps::settings))
        .route("/dashboard/apps/{id}/delete", post(apps::delete))
        .route("/dashboard/payouts", get(payouts::page))
        .route("/dashboard/payouts/onboard", post(payouts::onboard))
        .route("/dashboard/wallet", get(wallet::page_handler))
        .route("/dashboard/wallet/checkout", post(wallet::checkout))
        .route("/dashboard/wallet/connections/{app_id}/disconnect", post(wallet::disconnect))
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers on every dashboard response: no framing, no sniffing, a CSP that allows only this
/// origin's script and style (no inline script), no caching of pages that show account data.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'none'; \
             base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A signed-in dashboard visitor: the session and the CSRF token for this page's forms.
pub struct Dash {
    pub session: SessionUser,
    pub csrf: String,
}

impl Dash {
    /// The session again, by value, for calling an API handler.
    pub fn session(&self) -> SessionUser {
        SessionUser { user: self.session.user.clone(), token_hash: self.session.token_hash.clone() }
    }

    pub fn user_id(&self) -> &str {
        &self.session.user.id
    }
}

/// Where a visitor without a live session goes: the sign-in page, then back to `path`.
fn to_sign_in(parts: &Parts, had_cookie: bool) -> Response {
    let next = if parts.method == Method::GET {
        parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    let mut location = String::from("/dashboard/signin");
    let mut params = url::form_urlencoded::Serializer::new(String::new());
    if safe_next(&next).is_some() {
        params.append_pair("next", &next);
    }
    if had_cookie {
        params.append_pair("expired", "1");
    }
    let q = params.finish();
    if !q.is_empty() {
        location.push('?');
        location.push_str(&q);
    }
    see_other(&location)
}

/// A `next` target that stays inside the dashboard (never another site).
pub fn safe_next(next: &str) -> Option<&str> {
    let ok = next.starts_with("/dashboard")
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.chars().all(|c| !c.is_control())
        && next.len() <= 512;
    ok.then_some(next)
}

impl FromRequestParts<SharedState> for Dash {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Self::Rejection> {
        let had_cookie = crate::auth::cookie(&parts.headers, crate::auth::SESSION_COOKIE).is_some();
        match browser_session(state, &parts.headers).await {
            Ok(Some(session)) => {
                let csrf = state.oauth.csrf.token(CSRF_PURPOSE, &session.token_hash);
                Ok(Dash { session, csrf })
            }
            Ok(None) => Err(to_sign_in(parts, had_cookie)),
            Err(e) => Err(PageError(e).into_response()),
        }
    }
}

/// A form's fields (`application/x-www-form-urlencoded`); a name may repeat (checkboxes).
#[derive(Debug, Default)]
pub struct FormData(Vec<(String, String)>);

impl FormData {
    pub fn parse(body: &[u8]) -> FormData {
        FormData(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    /// The first value of `name`, trimmed ("" when absent).
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).unwrap_or("")
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

async fn read_form(body: axum::body::Body) -> Result<FormData, Response> {
    match axum::body::to_bytes(body, FORM_MAX_BYTES).await {
        Ok(b) => Ok(FormData::parse(&b)),
        Err(_) => Err(PageError(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "this form is larger than the dashboard accepts",
        ))
        .into_response()),
    }
}

/// A signed-in form submission whose CSRF token checked out. Any POST handler taking it cannot
/// run on a forged or stale form.
pub struct DashForm {
    pub dash: Dash,
    pub form: FormData,
    pub headers: HeaderMap,
}

impl FromRequest<SharedState> for DashForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let dash = Dash::from_request_parts(&mut parts, state).await?;
        let form = read_form(body).await?;
        if !state.oauth.csrf.verify(CSRF_PURPOSE, &dash.session.token_hash, form.get("csrf_token")) {
            let body = layout::frame(
                "Form refused",
                "",
                Some(&dash),
                Some(&Flash::error(
                    "This form expired or did not come from this dashboard, so nothing was changed. \
                     Go back, reload the page and try again.",
                )),
                "<h1>Form refused</h1><p><a href=\"/dashboard\">Back to the dashboard</a></p>",
            );
            return Err(html(StatusCode::FORBIDDEN, body));
        }
        Ok(DashForm { dash, form, headers: parts.headers })
    }
}

/// A message shown at the top of a page.
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

impl Flash {
    pub fn ok(text: impl Into<String>) -> Flash {
        Flash { ok: true, text: text.into() }
    }

    pub fn error(text: impl Into<String>) -> Flash {
        Flash { ok: false, text: text.into() }
    }

    /// An API error as people read it: its message, its advice, and its §13 code.
    pub fn from_api(e: &ApiError) -> Flash {
        let mut text = e.message.clone();
        if let Some(h) = &e.hint {
            text.push_str(" — ");
            text.push_str(h);
        }
        Flash::error(format!("{text} ({})", e.code))
    }

    /// The message behind a `?done=` after a redirect (a fixed list: nothing from the URL is
    /// echoed).
    pub fn done(query: Option<&str>) -> Option<Flash> {
        let code = url::form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "done").map(|(_, v)| v)?;
        let text = match code.as_ref() {
            "key_updated" => "Rate limit saved.",
            "key_revoked" => "Key revoked: it stops working within a second.",
            "webhook_test" => "Test event queued: it appears in the deliveries below within seconds.",
            "webhook_replay" => "Delivery queued again.",
            "webhook_deleted" => "Webhook endpoint deleted.",
            "webhook_enabled" => "Endpoint enabled: deliveries resume.",
            "webhook_disabled" => "Endpoint disabled: no deliveries until it is enabled again.",
            "app_deleted" => "App deleted: its users are disconnected and its tokens no longer work.",
            "app_updated" => "App saved.",
            "settings_updated" => "Markup and welcome credits saved.",
            "disconnected" => "App disconnected: its tokens no longer work.",
            "signed_out" => "You are signed out.",
            _ => return None,
        };
        Some(Flash::ok(text))
    }
}

/// An HTML response.
pub fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

/// `303 See Other` to `location` (POST-redirect-GET).
pub fn see_other(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A page that could not be built (the database, a bug): an error page, no detail.
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = layout::frame(
            "Error",
            "",
            None,
            Some(&Flash::from_api(&self.0)),
            "<h1>Something went wrong</h1><p><a href=\"/dashboard\">Back to the dashboard</a></p>",
        );
        html(self.0.status, body)
    }
}

pub type PageResult = Result<Response, PageError>;

/// The status a re-rendered form page answers with: the error's, or 200.
pub fn status_of(err: &Option<ApiError>) -> StatusCode {
    err.as_ref().map(|e| e.status).unwrap_or(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_inside_the_dashboard() {
        assert_eq!(safe_next("/dashboard/keys?x=1"), Some("/dashboard/keys?x=1"));
        for bad in ["", "https://evil.example/", "//evil.example", "/dashboard\\..", "/auth/me"] {
            assert_eq!(safe_next(bad), None, "{bad}");
        }
    }

    #[test]
    fn forms_keep_repeated_fields() {
        let f = FormData::parse(b"scope=openid&scope=email&name=+Acme+");
        assert_eq!(f.all("scope"), vec!["openid", "email"]);
        assert_eq!(f.get("name"), "Acme");
        assert_eq!(f.get("missing"), "");
    }

    #[test]
    fn done_messages_come_from_a_fixed_list() {
        assert!(Flash::done(Some("done=key_revoked")).is_some());
        assert!(Flash::done(Some("done=%3Cscript%3E")).is_none());
        assert!(Flash::done(None).is_none());
    }
}
