//! The authorization server's endpoints (SPEC §5): discovery and JWKS, `/oauth/authorize`
//! (Quota's sign-in / sign-up and consent pages), `/oauth/token`, `/oauth/userinfo` and
//! `/oauth/revoke`. The rules are in [`crate::oauth`]; these handlers parse and answer.
//!
//! `/oauth/authorize` refuses on its own page (never by redirect) when the client or the
//! redirect URI is wrong, so it can never be made to redirect anywhere unregistered; every
//! other problem goes back to the app's redirect URI with `error` and the `state` it sent.

use crate::app::SharedState;
use crate::auth::{browser_session, cookie, require_scope, user_access_token, SessionUser};
use crate::body::RawBody;
use crate::error::ApiError;
use crate::oauth::tokens::{self, authenticate_client, no_store, parse_form, Form, OAuthError};
use crate::oauth::{issuer, pages, pkce, redirect, Scope, Scopes};
use crate::secrets::hash_token;
use crate::services::accounts;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use quota_core::{AccountId, Margin};
use quota_store::oauth::{App, AuthCode};
use serde_json::json;
use std::net::SocketAddr;

/// The pre-session cookie the sign-in form's CSRF token is bound to.
const CSRF_COOKIE: &str = "quota_csrf";
/// Models whose prices the consent page shows, when the catalog has them.
const CONSENT_MODELS: [&str; 3] = ["gpt-4o-mini", "gpt-4o", "gpt-4.1"];

// ---- discovery -----------------------------------------------------------------------------

/// `GET /.well-known/openid-configuration`: cacheable for an hour when the issuer is
/// `public_url`, `no-store` otherwise.
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tag = "oauth",
    summary = "OpenID Connect discovery",
    responses(
        (status = 200, description = "the discovery document", body = crate::openapi::schemas::Discovery),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn discovery(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let iss = issuer(&state.config, &headers);
    let doc = json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/oauth/authorize"),
        "token_endpoint": format!("{iss}/oauth/token"),
        "userinfo_endpoint": format!("{iss}/oauth/userinfo"),
        "revocation_endpoint": format!("{iss}/oauth/revoke"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": Scope::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "none"],
        "code_challenge_methods_supported": ["S256", "plain"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "email", "email_verified", "name", "balance"],
    });
    let mut resp = Json(doc).into_response();
    // Without public_url the URLs come from the request's Host: no shared cache may keep them.
    let cache = if state.config.public_url.as_deref().is_some_and(|u| !u.is_empty()) {
        "public, max-age=3600"
    } else {
        "no-store"
    };
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

/// `GET /.well-known/jwks.json`: the id_token signing key.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "oauth",
    summary = "The RS256 key that signs id_tokens",
    responses(
        (status = 200, description = "the key set", body = crate::openapi::schemas::Jwks),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn jwks(State(state): State<SharedState>) -> Result<Response, ApiError> {
    let key = state.oauth.signing.get(&state.store, &state.master_key, state.clock.now_ms()).await?;
    let mut resp = Json(json!({"keys": [key.jwk]})).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    Ok(resp)
}

// ---- /oauth/authorize ----------------------------------------------------------------------

/// The parameters of an authorization request, as sent (validated by [`validate`]).
struct AuthorizeRequest {
    fields: Vec<(&'static str, String)>,
}

const AUTHORIZE_PARAMS: [&str; 8] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "nonce",
];

impl AuthorizeRequest {
    fn from_form(form: &Form) -> AuthorizeRequest {
        let fields = AUTHORIZE_PARAMS
            .iter()
            .filter_map(|k| form.get(*k).filter(|v| !v.is_empty()).map(|v| (*k, v.clone())))
            .collect();
        AuthorizeRequest { fields }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.fields.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.fields {
            q.append_pair(k, v);
        }
        q.finish()
    }
}

/// A request that passed every check.
struct Validated {
    app: App,
    redirect_uri: String,
    scopes: Scopes,
    state: Option<String>,
    challenge: Option<(String, pkce::Method)>,
    nonce: Option<String>,
}

impl Validated {
    /// Back to the app with `params` and the request's `state`.
    fn redirect(&self, params: &[(&str, &str)]) -> Response {
        let mut all = params.to_vec();
        if let Some(s) = &self.state {
            all.push(("state", s));
        }
        match redirect::with_params(&self.redirect_uri, &all) {
            Some(location) => see_other(&location),
            None => html(StatusCode::BAD_REQUEST, pages::error("the registered redirect URI is not a valid URL"), None),
        }
    }
}

/// Why a request cannot continue: on Quota's page, or back at the app.
enum Refusal {
    Page(StatusCode, String),
    Redirect(Response),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Page(status, message) => html(status, pages::error(&message), None),
            Refusal::Redirect(r) => r,
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal::Page(e.status, e.message)
    }
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut resp = StatusCode::SEE_OTHER.into_response();
            resp.headers_mut().insert(header::LOCATION, v);
            no_store(resp)
        }
        Err(_) => html(StatusCode::BAD_REQUEST, pages::error("the redirect URI cannot be sent back"), None),
    }
}

/// An HTML page that may not be framed (clickjacking) or cached.
pub(crate) fn html(status: StatusCode, body: String, set_cookie: Option<String>) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.append(header::SET_COOKIE, c);
    }
    no_store(resp)
}

/// Check an authorization request (RFC 6749 §4.1.2.1 order: client and redirect URI first,
/// on our page; the rest by redirect).
async fn validate(state: &SharedState, req: &AuthorizeRequest) -> Result<Validated, Refusal> {
    let Some(client_id) = req.get("client_id") else {
        return Err(Refusal::Page(StatusCode::BAD_REQUEST, "the request has no client_id".into()));
    };
    let app = state
        .store
        .app_by_client_id(client_id)
        .await
        .map_err(crate::error::internal("authorize client"))?
        .ok_or_else(|| Refusal::Page(StatusCode::BAD_REQUEST, "unknown client_id: no such app".into()))?;
    let Some(redirect_uri) = req.get("redirect_uri") else {
        return Err(Refusal::Page(StatusCode::BAD_REQUEST, "the request has no redirect_uri".into()));
    };
    if !redirect::is_registered(&app.redirect_uris, redirect_uri) {
        return Err(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "the redirect_uri is not one this app registered; Quota will not send you there".into(),
        ));
    }
    let state_param = req.get("state").map(str::to_string);
    let mut v = Validated {
        app,
        redirect_uri: redirect_uri.to_string(),
        scopes: Scopes::default(),
        state: state_param.filter(|s| s.len() <= crate::oauth::STATE_MAX_LEN),
        challenge: None,
        nonce: None,
    };
    let fail = |v: &Validated, error: &str, description: &str| {
        Refusal::Redirect(v.redirect(&[("error", error), ("error_description", description)]))
    };
    if req.get("state").is_some_and(|s| s.len() > crate::oauth::STATE_MAX_LEN) {
        return Err(fail(&v, "invalid_request", "state is too long"));
    }
    if req.get("response_type") != Some("code") {
        return Err(fail(&v, "unsupported_response_type", "only response_type=code is supported"));
    }
    let Some(scope) = req.get("scope") else {
        return Err(fail(&v, "invalid_scope", "scope is required"));
    };
    let scopes = match Scopes::parse(scope) {
        Ok(s) if s.is_empty() => return Err(fail(&v, "invalid_scope", "scope is required")),
        Ok(s) => s,
        Err(e) => return Err(fail(&v, "invalid_scope", &e)),
    };
    let allowed = Scopes::parse(&v.app.allowed_scopes).unwrap_or_default();
    if !scopes.is_subset_of(allowed) {
        return Err(fail(&v, "invalid_scope", "the app may not ask for some of these scopes"));
    }
    v.scopes = scopes;
    let method = match pkce::Method::parse(req.get("code_challenge_method")) {
        Ok(m) => m,
        Err(e) => return Err(fail(&v, "invalid_request", &e)),
    };
    match req.get("code_challenge") {
        Some(c) if pkce::well_formed(c) => v.challenge = Some((c.to_string(), method)),
        Some(_) => {
            return Err(fail(&v, "invalid_request", "code_challenge must be 43 to 128 characters [A-Za-z0-9-._~]"))
        }
        None if v.app.is_public() => {
            return Err(fail(&v, "invalid_request", "PKCE is required: send code_challenge (S256)"))
        }
        None if req.get("code_challenge_method").is_some() => {
            return Err(fail(&v, "invalid_request", "code_challenge_method without code_challenge"))
        }
        None => {}
    }
    match req.get("nonce") {
        Some(n) if n.len() > crate::oauth::NONCE_MAX_LEN => {
            return Err(fail(&v, "invalid_request", "nonce is too long"))
        }
        n => v.nonce = n.map(str::to_string),
    }
    Ok(v)
}

/// The sign-in page, with its pre-session CSRF cookie (kept if the browser has one).
fn sign_in_page(
    state: &SharedState,
    headers: &HeaderMap,
    req: &AuthorizeRequest,
    app: &App,
    status: StatusCode,
    error: Option<&str>,
    email: &str,
) -> Response {
    let (binding, set_cookie) =
        crate::oauth::csrf::binding_cookie(headers, CSRF_COOKIE, "/oauth", state.config.cookie_secure);
    let csrf = state.oauth.csrf.token("sign-in", &binding);
    let body = pages::sign_in(&app.name, &pages::hidden_fields(&req.pairs()), &csrf, error, email);
    html(status, body, set_cookie)
}

async fn consent_page(state: &SharedState, session: &SessionUser, v: &Validated, req: &AuthorizeRequest) -> Response {
    let balance = match state.ledger.balance(&AccountId::wallet(&session.user.id)).await {
        Ok(b) => b,
        Err(e) => return Refusal::from(crate::error::internal("consent balance")(e)).into_response(),
    };
    // What the user consented to before, when the app has raised its margin since: the page
    // shows old → new, and approving it is what makes the new margin apply (SPEC §5).
    let previous = match state.store.consented_margin(&session.user.id, &v.app.id).await {
        Ok(p) => p.filter(|bps| *bps < v.app.profit_margin_bps).and_then(|bps| Margin::from_bps(bps).ok()),
        Err(e) => return Refusal::from(crate::error::internal("consented margin")(e)).into_response(),
    };
    let price = pages::PriceView {
        margin: Margin::from_bps(v.app.profit_margin_bps).unwrap_or(Margin::ZERO),
        previous_margin: previous,
        balance,
        models: CONSENT_MODELS.iter().filter_map(|id| state.catalog.get(id).map(|m| m.as_ref())).collect(),
    };
    // The token commits to the margin shown, so an approval consents to exactly that margin
    // (and a developer's change after the page was shown makes it stale).
    let shown = price.margin.bps();
    let csrf = state.oauth.csrf.token(&consent_purpose(shown), &session.token_hash);
    let mut pairs = req.pairs();
    let shown_text = shown.to_string();
    pairs.push((SHOWN_MARGIN_FIELD, &shown_text));
    let hidden = pages::hidden_fields(&pairs);
    html(StatusCode::OK, pages::consent(&v.app.name, &session.user.email, v.scopes, &price, &hidden, &csrf), None)
}

/// The consent form's field carrying the margin (basis points) its page showed.
const SHOWN_MARGIN_FIELD: &str = "shown_margin_bps";

/// The consent form's CSRF purpose: bound to the margin shown.
fn consent_purpose(margin_bps: u32) -> String {
    format!("consent:{margin_bps}")
}

/// Parse (a query string or a form body) and validate an authorization request.
async fn read_request(state: &SharedState, encoded: &[u8]) -> Result<(Form, AuthorizeRequest, Validated), Refusal> {
    let form = parse_form(encoded).map_err(|e| Refusal::Page(StatusCode::BAD_REQUEST, e))?;
    let req = AuthorizeRequest::from_form(&form);
    let v = validate(state, &req).await?;
    Ok((form, req, v))
}

/// `GET /oauth/authorize`: sign in if needed, then the consent page.
#[utoipa::path(
    get,
    path = "/oauth/authorize",
    tag = "oauth",
    summary = "Authorization request: the sign-in page, then the consent page (HTML)",
    responses(
        (status = 200, description = "a page", body = String, content_type = "text/html"),
        (status = 303, description = "back to the redirect URI with `code` or `error`, and `state`"),
        (status = 400, description = "a wrong client or redirect URI, refused on the page (never by redirect)", body = String, content_type = "text/html"),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn authorize_get(
    State(state): State<SharedState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (_, req, v) = match read_request(&state, query.unwrap_or_default().as_bytes()).await {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    match browser_session(&state, &headers).await {
        Ok(Some(session)) => consent_page(&state, &session, &v, &req).await,
        Ok(None) => sign_in_page(&state, &headers, &req, &v.app, StatusCode::OK, None, ""),
        Err(e) => Refusal::from(e).into_response(),
    }
}

/// One submitted authorization form: its request, validated, and the form's fields.
struct Submitted {
    form: Form,
    req: AuthorizeRequest,
    v: Validated,
}

impl Submitted {
    fn field(&self, name: &str) -> &str {
        self.form.get(name).map(String::as_str).unwrap_or("")
    }
}

/// `POST /oauth/authorize`: the sign-in, sign-up and consent forms.
#[utoipa::path(
    post,
    path = "/oauth/authorize",
    tag = "oauth",
    summary = "The sign-in, sign-up and consent forms (CSRF-protected)",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "the form's fields"),
    responses(
        (status = 200, description = "a page again (a wrong password, a form to correct)", body = String, content_type = "text/html"),
        (status = 303, description = "the next step, or back to the redirect URI"),
        (status = 400, description = "a refused request", body = String, content_type = "text/html"),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn authorize_post(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let (form, req, v) = match read_request(&state, &body).await {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    let sub = Submitted { form, req, v };
    match sub.field("action") {
        "login" => sign_in_form(&state, &peer, &headers, &sub, false).await,
        "signup" => sign_in_form(&state, &peer, &headers, &sub, true).await,
        "approve" => consent_form(&state, &headers, &sub, true).await,
        "deny" => consent_form(&state, &headers, &sub, false).await,
        _ => Refusal::Page(StatusCode::BAD_REQUEST, "unknown form action".into()).into_response(),
    }
}

/// The sign-in (or sign-up) form: the same functions, and so the same per-IP budgets and
/// lockout, as `/auth/login` and `/auth/register` (SPEC §1); then back to the consent page.
async fn sign_in_form(
    state: &SharedState,
    peer: &SocketAddr,
    headers: &HeaderMap,
    sub: &Submitted,
    signup: bool,
) -> Response {
    let (req, app) = (&sub.req, &sub.v.app);
    let fresh =
        cookie(headers, CSRF_COOKIE).is_some_and(|c| state.oauth.csrf.verify("sign-in", c, sub.field("csrf_token")));
    if !fresh {
        let message = "This form expired or did not come from Quota. Please sign in again.";
        return sign_in_page(state, headers, req, app, StatusCode::FORBIDDEN, Some(message), "");
    }
    let (email, password) = (sub.field("email"), sub.field("password"));
    let ip = state.proxies.client(peer, headers);
    let user = if signup {
        accounts::sign_up(state, ip, email, password).await
    } else {
        accounts::sign_in(state, ip, email, password).await
    };
    match user {
        Ok(user) => match accounts::new_session(state, &user).await {
            Ok(session) => {
                let mut resp = see_other(&format!("/oauth/authorize?{}", req.query()));
                if let Ok(c) = HeaderValue::from_str(&session.set_cookie) {
                    resp.headers_mut().append(header::SET_COOKIE, c);
                }
                resp
            }
            Err(e) => Refusal::from(e).into_response(),
        },
        Err(e) if e.status.is_server_error() => Refusal::from(e).into_response(),
        Err(e) => e.with_retry_after(sign_in_page(state, headers, req, app, e.status, Some(&e.message), email)),
    }
}

/// The consent form: approve (consenting to the margin its page showed) or deny.
async fn consent_form(state: &SharedState, headers: &HeaderMap, sub: &Submitted, approved: bool) -> Response {
    let (req, v) = (&sub.req, &sub.v);
    let session = match browser_session(state, headers).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            let message = Some("Please sign in first.");
            return sign_in_page(state, headers, req, &v.app, StatusCode::UNAUTHORIZED, message, "");
        }
        Err(e) => return Refusal::from(e).into_response(),
    };
    let shown =
        sub.field(SHOWN_MARGIN_FIELD).parse::<u32>().ok().filter(|bps| {
            state.oauth.csrf.verify(&consent_purpose(*bps), &session.token_hash, sub.field("csrf_token"))
        });
    let Some(shown) = shown else {
        let message = "This form expired or did not come from Quota; nothing was approved. Go back and try again.";
        return Refusal::Page(StatusCode::FORBIDDEN, message.into()).into_response();
    };
    if !approved {
        tracing::info!(app = %v.app.id, user = %session.user.id, "consent denied");
        return v.redirect(&[("error", "access_denied"), ("error_description", "the user denied the request")]);
    }
    if shown != v.app.profit_margin_bps {
        // The developer changed the markup after the page was shown: show the new one.
        return consent_page(state, &session, v, req).await;
    }
    match approve(state, &session, v, shown).await {
        Ok(code) => v.redirect(&[("code", &code)]),
        Err(e) => Refusal::from(e).into_response(),
    }
}

/// Consent given: connect (with `user.connected` the first time) and grant the app's welcome
/// credits (once per user ever), then a single-use code for the app.
async fn approve(
    state: &SharedState,
    session: &SessionUser,
    v: &Validated,
    shown_margin_bps: u32,
) -> Result<String, ApiError> {
    let now = state.clock.now_ms();
    let user_id = &session.user.id;
    let event = tokens::connection_event(crate::webhooks::EventKind::UserConnected, &v.app, user_id, now);
    let newly = state
        .store
        .connect(user_id, &v.app.id, &v.scopes.to_string(), shown_margin_bps, now, event)
        .await
        .map_err(crate::error::internal("connect"))?;
    // The connection's margin may have risen (a re-approval): cached tokens carry the old one.
    state.oauth.tokens.evict_connection(user_id, &v.app.id);
    crate::changes::announce(state, &crate::changes::connection(user_id, &v.app.id)).await;
    if newly {
        tracing::info!(app = %v.app.id, user = %user_id, "user connected");
    }
    // Tried on every approval, not only the first: the transfer id makes it once per user and
    // app, and a grant lost to a crash (or skipped while the developer's wallet was empty) is
    // made up the next time the user approves.
    crate::services::funding::grant_app_welcome(state, &v.app, user_id).await;
    let code = quota_core::ids::new_secret(crate::oauth::CODE_PREFIX);
    state
        .store
        .insert_code(&AuthCode {
            code_hash: hash_token(&code),
            app_id: v.app.id.clone(),
            user_id: user_id.clone(),
            redirect_uri: v.redirect_uri.clone(),
            scopes: v.scopes.to_string(),
            code_challenge: v.challenge.as_ref().map(|(c, _)| c.clone()),
            code_challenge_method: v.challenge.as_ref().map(|(_, m)| m.as_str().to_string()),
            nonce: v.nonce.clone(),
            auth_time: now,
            created_at: now,
            expires_at: now + crate::oauth::CODE_TTL_MS,
            used_at: None,
            grant_id: None,
        })
        .await
        .map_err(crate::error::internal("insert code"))?;
    Ok(code)
}

// ---- token, userinfo, revoke ---------------------------------------------------------------

/// A token or revocation request's form and the client it authenticated as (SPEC §5: client
/// authentication comes before anything else is remembered about the request).
async fn client_request(
    state: &SharedState,
    peer: &SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Form, App), OAuthError> {
    let form = parse_form(body).map_err(OAuthError::invalid_request)?;
    let ip = state.proxies.client(peer, headers);
    let app = authenticate_client(state, &form, headers, ip).await?;
    Ok((form, app))
}

/// `POST /oauth/token`: `authorization_code` and `refresh_token` grants.
#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "oauth",
    summary = "authorization_code (PKCE) and refresh_token (rotating) grants",
    request_body(content = crate::openapi::schemas::TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "the tokens", body = crate::oauth::tokens::TokenResponse),
        (status = 400, description = "RFC 6749 §5.2: `invalid_request`, `invalid_grant`, `unsupported_grant_type`, `invalid_scope`", body = crate::openapi::schemas::OAuthErrorBody),
        (status = 401, description = "`invalid_client`", body = crate::openapi::schemas::OAuthErrorBody),
        (status = 429, description = "`rate_limit_exceeded`", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::Errors,
    ),
    security((), ("oauthClient" = []))
)]
pub async fn token(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let result = async {
        let (form, app) = client_request(&state, &peer, &headers, &body).await?;
        let iss = issuer(&state.config, &headers);
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => tokens::exchange_code(&state, &app, &form, &iss).await,
            Some("refresh_token") => tokens::refresh(&state, &app, &form, &iss).await,
            Some(other) => Err(OAuthError::unsupported_grant_type(format!("grant_type `{other}` is not supported"))),
            None => Err(OAuthError::invalid_request("grant_type is required")),
        }
    }
    .await;
    match result {
        Ok(t) => no_store(Json(t).into_response()),
        Err(e) => e.into_response(),
    }
}

/// `GET|POST /oauth/userinfo`: the claims the token's scopes release, plus `balance`.
#[utoipa::path(
    method(get, post),
    path = "/oauth/userinfo",
    tag = "oauth",
    summary = "Claims per scope (sub, email, email_verified, name) plus balance; needs `openid`",
    responses(
        (status = 200, description = "the claims", body = crate::openapi::schemas::UserInfo),
        (status = 401, description = "`invalid_token`", body = crate::openapi::schemas::ErrorBody),
        (status = 403, description = "`insufficient_scope`", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::Errors,
    ),
    security(("userToken" = []))
)]
pub async fn userinfo(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let result = async {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "missing bearer access token"))?;
        let t = user_access_token(&state, token).await?;
        let scopes = require_scope(&t, Scope::Openid)?;
        let user = state
            .store
            .user_by_id(&t.user_id)
            .await
            .map_err(crate::error::internal("userinfo user"))?
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "unknown user"))?;
        // A token with neither credits scope signed the user in without linking their wallet
        // to this app: `balance` is null, not 0 (SPEC §14; "show Link wallet").
        let wallet_linked = scopes.contains(Scope::CreditsRead) || scopes.contains(Scope::CreditsSpend);
        let balance = match wallet_linked {
            true => Some(
                state
                    .ledger
                    .balance(&AccountId::wallet(&t.user_id))
                    .await
                    .map_err(crate::error::internal("userinfo balance"))?,
            ),
            false => None,
        };
        let (email, email_verified, name) = tokens::identity_claims(scopes, &user.email);
        let mut out = json!({"sub": t.user_id, "balance": balance});
        if let Some(e) = email {
            out["email"] = json!(e);
            out["email_verified"] = json!(email_verified);
        }
        if let Some(n) = name {
            // The account's own name when it has one (PATCH /account), else its email as before.
            let profile = state.store.profile(&t.user_id).await.map_err(crate::error::internal("userinfo profile"))?;
            let profile = profile.unwrap_or_default();
            out["name"] = json!(profile.name.as_deref().unwrap_or(n));
            if let Some(picture) = profile.avatar_url {
                out["picture"] = json!(picture);
            }
        }
        Ok::<_, ApiError>(out)
    }
    .await;
    match result {
        Ok(v) => no_store(Json(v).into_response()),
        Err(e) => {
            let challenge = match e.code {
                "invalid_token" => Some("Bearer error=\"invalid_token\""),
                "insufficient_scope" => Some("Bearer error=\"insufficient_scope\", scope=\"openid\""),
                _ => None,
            };
            let mut resp = e.into_response();
            if let Some(c) = challenge {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
            }
            resp
        }
    }
}

/// `POST /oauth/revoke` (RFC 7009): 200 whether or not the token was known.
#[utoipa::path(
    post,
    path = "/oauth/revoke",
    tag = "oauth",
    summary = "RFC 7009 revocation: ends the user's connection to the app",
    request_body(content = crate::openapi::schemas::TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "revoked, or the token was not known", body = crate::openapi::schemas::Empty),
        (status = 400, description = "RFC 6749 §5.2: `invalid_request`, `invalid_grant`, `unsupported_grant_type`, `invalid_scope`", body = crate::openapi::schemas::OAuthErrorBody),
        (status = 401, description = "`invalid_client`", body = crate::openapi::schemas::OAuthErrorBody),
        crate::openapi::Errors,
    ),
    security((), ("oauthClient" = []))
)]
pub async fn revoke(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let result = async {
        let (form, app) = client_request(&state, &peer, &headers, &body).await?;
        tokens::revoke(&state, &app, &form).await
    }
    .await;
    match result {
        Ok(()) => no_store(Json(json!({})).into_response()),
        Err(e) => e.into_response(),
    }
}
