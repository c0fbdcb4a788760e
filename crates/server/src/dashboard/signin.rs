//! Sign in, sign up and sign out (SPEC §1 accounts, the `quota_session` cookie). The same
//! functions as `/auth/login` and `/auth/register` (and their per-IP limits); the forms' CSRF
//! tokens are bound to a random pre-session cookie, as on the OAuth sign-in page.

use super::layout::{escape, frame};
use super::{html, read_form, safe_next, see_other, DashForm, Flash, FormData};
use crate::app::SharedState;
use crate::auth::{browser_session, cookie};
use crate::error::ApiError;
use crate::services::accounts;
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

const CSRF_COOKIE: &str = "quota_dash_csrf";
const CSRF_PURPOSE: &str = "dashboard-sign-in";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    SignIn,
    SignUp,
}

fn query_param(query: &Option<String>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_deref()?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The form's page, with its pre-session CSRF cookie (kept if the browser has one).
fn form_page(
    state: &SharedState,
    headers: &HeaderMap,
    kind: Kind,
    status: StatusCode,
    flash: Option<Flash>,
    email: &str,
    next: &str,
) -> Response {
    let (binding, set_cookie) =
        crate::oauth::csrf::binding_cookie(headers, CSRF_COOKIE, "/dashboard", state.config.cookie_secure);
    let csrf = state.oauth.csrf.token(CSRF_PURPOSE, &binding);
    let (title, action, button, autocomplete, other) = match kind {
        Kind::SignIn => (
            "Sign in",
            "/dashboard/signin",
            "Sign in",
            "current-password",
            "New to Quota? <a href=\"/dashboard/signup\">Create an account</a> — it comes with $1.00 of welcome credits.",
        ),
        Kind::SignUp => (
            "Create your account",
            "/dashboard/signup",
            "Create account",
            "new-password",
            "Already have an account? <a href=\"/dashboard/signin\">Sign in</a>.",
        ),
    };
    let next_field = safe_next(next)
        .map(|n| format!("<input type=\"hidden\" name=\"next\" value=\"{}\">", escape(n)))
        .unwrap_or_default();
    let body = format!(
        "<div class=\"auth\"><h1>{title}</h1><section><form method=\"post\" action=\"{action}\" class=\"stack\">\
         <input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">{next_field}\
         <label for=\"email\">Email</label><input type=\"email\" id=\"email\" name=\"email\" value=\"{email}\" required autocomplete=\"email\">\
         <label for=\"password\">Password <span class=\"hint\">At least 8 characters.</span></label>\
         <input type=\"password\" id=\"password\" name=\"password\" required minlength=\"8\" autocomplete=\"{autocomplete}\">\
         <button type=\"submit\">{button}</button></form></section><p>{other}</p></div>",
        csrf = escape(&csrf),
        email = escape(email),
    );
    let mut resp = html(status, frame(title, "", None, flash.as_ref(), &body));
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

async fn get_page(state: &SharedState, headers: &HeaderMap, query: Option<String>, kind: Kind) -> Response {
    let next = query_param(&query, "next").unwrap_or_default();
    if let Ok(Some(_)) = browser_session(state, headers).await {
        return see_other(safe_next(&next).unwrap_or("/dashboard"));
    }
    let flash = if query_param(&query, "expired").is_some() {
        Some(Flash::error("Your session has expired or was signed out. Please sign in again."))
    } else {
        Flash::done(query.as_deref())
    };
    form_page(state, headers, kind, StatusCode::OK, flash, "", &next)
}

/// `GET /dashboard/signin`.
pub async fn signin_page(State(state): State<SharedState>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    get_page(&state, &headers, q, Kind::SignIn).await
}

/// `GET /dashboard/signup`.
pub async fn signup_page(State(state): State<SharedState>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    get_page(&state, &headers, q, Kind::SignUp).await
}

async fn submit(state: SharedState, peer: SocketAddr, req: Request, kind: Kind) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let form: FormData = match read_form(body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let email = form.get("email").to_string();
    let next = form.get("next").to_string();
    let fresh =
        cookie(&headers, CSRF_COOKIE).is_some_and(|c| state.oauth.csrf.verify(CSRF_PURPOSE, c, form.get("csrf_token")));
    if !fresh {
        let flash =
            Flash::error("This form expired or did not come from Quota, so nothing was done. Please try again.");
        return form_page(&state, &headers, kind, StatusCode::FORBIDDEN, Some(flash), &email, &next);
    }
    let password = form.0.iter().find(|(k, _)| k == "password").map(|(_, v)| v.as_str()).unwrap_or("");
    let result: Result<quota_store::User, ApiError> = async {
        let ip = state.proxies.client(&peer, &headers);
        match kind {
            Kind::SignIn => accounts::sign_in(&state, ip, &email, password).await,
            Kind::SignUp => {
                let user = accounts::sign_up(&state, ip, &email, password).await?;
                tracing::info!(user = %user.id, "account registered (dashboard)");
                Ok(user)
            }
        }
    }
    .await;
    let user = match result {
        Ok(u) => u,
        Err(e) => {
            let page = form_page(&state, &headers, kind, e.status, Some(Flash::from_api(&e)), &email, &next);
            return e.with_retry_after(page);
        }
    };
    match accounts::new_session(&state, &user).await {
        Ok(session) => {
            let mut resp = see_other(safe_next(&next).unwrap_or("/dashboard"));
            if let Ok(c) = HeaderValue::from_str(&session.set_cookie) {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
            resp
        }
        Err(e) => form_page(&state, &headers, kind, e.status, Some(Flash::from_api(&e)), &email, &next),
    }
}

/// `POST /dashboard/signin`.
pub async fn signin(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    submit(state, peer, req, Kind::SignIn).await
}

/// `POST /dashboard/signup`.
pub async fn signup(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    submit(state, peer, req, Kind::SignUp).await
}

/// `POST /dashboard/signout`: the session ends everywhere (API too), the cookie is cleared.
pub async fn signout(State(state): State<SharedState>, f: DashForm) -> Response {
    if let Err(e) = accounts::end_session(&state, &f.dash.session.token_hash).await {
        return super::PageError(e).into_response();
    }
    let mut resp = see_other("/dashboard/signin?done=signed_out");
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("quota_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    resp
}
