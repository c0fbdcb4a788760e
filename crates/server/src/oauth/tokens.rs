//! Tokens (SPEC §5): client authentication at the token endpoint, the authorization-code and
//! refresh-token grants, revocation (RFC 7009), id_tokens, and the in-memory cache that admits
//! access tokens without a database read once seen.
//!
//! Codes and tokens are stored only as hashes. A code is used once: a second use revokes the
//! grant the first one created. A refresh token rotates on use: presenting a rotated one again
//! revokes its whole grant. Revoking a token at `/oauth/revoke` ends the user's connection to
//! the app (SPEC §5: the developer side of a disconnect).

use super::{pkce, Scope, Scopes};
use crate::app::SharedState;
use crate::secrets::hash_token;
use crate::webhooks::EventKind;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use parking_lot::RwLock;
use quota_store::oauth::{AccessGrant, App, ExchangeError, NewGrant, NewToken, TokenKind};
use quota_store::{OutboxEvent, Store, StoreError};
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// An error of the token and revocation endpoints, in the shape every OAuth client library
/// reads (RFC 6749 §5.2): `{"error": "invalid_grant", "error_description": "…"}`.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
    /// Quota's own 429 (`rate_limit_exceeded`, SPEC §13 shape with `Retry-After`), answered as is.
    pub refusal: Option<Box<crate::error::ApiError>>,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError { status, error, description: description.into(), refusal: None }
    }
    pub fn invalid_request(d: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }
    pub fn invalid_client(d: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }
    pub fn invalid_scope(d: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_scope", d)
    }
    pub fn unsupported_grant_type(d: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", d)
    }
    pub fn server_error() -> OAuthError {
        OAuthError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error")
    }
}

impl From<crate::error::ApiError> for OAuthError {
    fn from(e: crate::error::ApiError) -> OAuthError {
        if e.status.is_server_error() {
            return OAuthError::server_error();
        }
        if e.status == StatusCode::TOO_MANY_REQUESTS {
            let mut refused = OAuthError::new(e.status, "rate_limit_exceeded", e.message.clone());
            refused.refusal = Some(Box::new(e));
            return refused;
        }
        OAuthError::invalid_request(e.message)
    }
}

fn store_error(context: &'static str) -> impl FnOnce(StoreError) -> OAuthError {
    move |e| {
        tracing::error!(error = %e, "{context}");
        OAuthError::server_error()
    }
}

/// `Cache-Control: no-store` on everything that carries or concerns a token (RFC 6749 §5.1).
pub fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        if let Some(refusal) = self.refusal {
            return no_store(refusal.into_response());
        }
        let mut resp =
            (self.status, Json(json!({"error": self.error, "error_description": self.description}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"quota\""));
        }

        no_store(resp)
    }
}

/// The token endpoint's answer (SPEC §5).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_token: String,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

/// Most access tokens kept in memory at once.
pub const TOKEN_CACHE_MAX: usize = 100_000;

/// Live access tokens by hash. Holds only tokens that were live when read; each entry is
/// re-checked for expiry against the clock on every use, and revocations evict at once.
#[derive(Default)]
pub struct TokenCache {
    by_hash: RwLock<HashMap<String, Arc<AccessGrant>>>,
    /// Bumped by every eviction, so a database read that raced with a revocation is not cached.
    generation: AtomicU64,
}

impl TokenCache {
    /// The live access token with this hash at `now`, if any.
    pub async fn lookup(&self, store: &Store, hash: &str, now: i64) -> Result<Option<Arc<AccessGrant>>, StoreError> {
        if let Some(t) = self.by_hash.read().get(hash) {
            if t.expires_at > now {
                return Ok(Some(t.clone()));
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let Some(grant) = store.live_access_token(hash, now).await? else {
            self.by_hash.write().remove(hash);
            return Ok(None);
        };
        let grant = Arc::new(grant);
        let mut map = self.by_hash.write();
        if self.generation.load(Ordering::Acquire) == generation {
            if map.len() >= TOKEN_CACHE_MAX {
                // Bounded: drop what expired; if that is not enough, start over (entries reload).
                map.retain(|_, t| t.expires_at > now);
                if map.len() >= TOKEN_CACHE_MAX {
                    map.clear();
                }
            }
            map.insert(hash.to_string(), grant.clone());
        }
        Ok(Some(grant))
    }

    fn evict_where(&self, pred: impl Fn(&AccessGrant) -> bool) {
        let mut map = self.by_hash.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.retain(|_, t| !pred(t));
    }

    pub fn evict_grant(&self, grant_id: &str) {
        self.evict_where(|t| t.grant_id == grant_id);
    }

    pub fn evict_connection(&self, user_id: &str, app_id: &str) {
        self.evict_where(|t| t.user_id == user_id && t.app_id == app_id);
    }

    /// After an app's deletion or a change of its markup.
    pub fn evict_app(&self, app_id: &str) {
        self.evict_where(|t| t.app_id == app_id);
    }

    /// Drop everything (changes may have been missed).
    pub fn clear(&self) {
        self.evict_where(|_| true);
    }
}

/// A form body's fields (RFC 6749 §3.2: parameters sent twice are an error).
pub type Form = HashMap<String, String>;

/// Parse `application/x-www-form-urlencoded`; a repeated parameter is refused.
pub fn parse_form(body: &[u8]) -> Result<Form, String> {
    let mut form = Form::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if form.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("parameter `{k}` is repeated"));
        }
    }
    Ok(form)
}

fn field<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// Longest `client_id` looked up (Quota's own are ~40 characters): anything longer is refused
/// before the database or the limiter sees it (SPEC §5).
pub const CLIENT_ID_MAX_LEN: usize = 64;

/// Failed client-secret guesses allowed per minute per (client, client IP) at `/oauth/token`
/// and `/oauth/revoke`; past it, that address gets 429 for that client (others are unaffected).
pub const SECRET_GUESSES_PER_MINUTE: u32 = 10;

/// The client credentials a request presents: (client_id, secret), from HTTP Basic or the form.
fn presented_credentials<'a>(
    form: &'a Form,
    basic: &'a Option<(String, String)>,
) -> Result<(&'a str, Option<&'a str>), OAuthError> {
    match (basic, field(form, "client_id")) {
        (Some((id, secret)), form_id) => {
            if form_id.is_some_and(|f| f != id) || form.contains_key("client_secret") {
                return Err(OAuthError::invalid_request("use one client authentication method"));
            }
            Ok((id.as_str(), Some(secret.as_str())))
        }
        (None, Some(id)) => Ok((id, field(form, "client_secret"))),
        (None, None) => Err(OAuthError::invalid_client("client_id is required")),
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .filter(|b| b.len() <= 4 * 1024)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            let decode =
                |x: &str| url::form_urlencoded::parse(format!("x={x}").as_bytes()).next().map(|(_, v)| v.to_string());
            Some((decode(id)?, decode(secret)?))
        })
}

/// Client authentication at the token and revocation endpoints (SPEC §5): `client_secret_post`
/// (or HTTP Basic, which many libraries default to) for confidential clients, `none` for public
/// ones; secrets are compared by hash in constant time.
///
/// Nothing is remembered about a request before its client is known: an over-long or unknown
/// `client_id` is `invalid_client` with no limiter state created. Then the endpoint's limit
/// counts per (client, client IP), and failed secret guesses per (client, client IP) too, so
/// spending a client's budget from one address never locks it out at another.
pub async fn authenticate_client(
    state: &SharedState,
    form: &Form,
    headers: &HeaderMap,
    ip: std::net::IpAddr,
) -> Result<App, OAuthError> {
    let basic = basic_credentials(headers);
    let (client_id, secret) = presented_credentials(form, &basic)?;
    if client_id.len() > CLIENT_ID_MAX_LEN {
        return Err(OAuthError::invalid_client("unknown client"));
    }
    let app = state
        .store
        .app_by_client_id(client_id)
        .await
        .map_err(store_error("client lookup"))?
        .ok_or_else(|| OAuthError::invalid_client("unknown client"))?;
    // Keys are built from the app's id and the client IP only: values the server verified.
    let per_minute = state.config.token_rate_limit_per_minute;
    let ip = crate::client_ip::limit_bucket(ip);
    crate::limit::check_one(&state.limiter, format!("token:{}:{ip}", app.id), per_minute).await?;
    let guesses = format!("token-secret:{}:{ip}", app.id);
    match (&app.client_secret_hash, secret) {
        (None, None) => Ok(app),
        (None, Some(_)) => Err(OAuthError::invalid_client("this client is public: it authenticates with no secret")),
        (Some(_), None) => Err(OAuthError::invalid_client("client_secret is required for this client")),
        (Some(stored), Some(given)) => {
            // Refuse before verifying once this address has used up its guesses.
            let limiter = &state.limiter;
            use crate::limit::Count;
            crate::limit::check_one_counting(limiter, guesses.clone(), SECRET_GUESSES_PER_MINUTE, Count::No).await?;
            if bool::from(hash_token(given).as_bytes().ct_eq(stored.as_bytes())) {
                Ok(app)
            } else {
                tracing::info!(app = %app.id, %ip, "client authentication failed at the token endpoint");
                crate::limit::check_one(limiter, guesses, SECRET_GUESSES_PER_MINUTE).await?;
                Err(OAuthError::invalid_client("client authentication failed"))
            }
        }
    }
}

struct Minted {
    access: String,
    refresh: String,
    rows: [NewToken; 2],
}

/// New access and refresh tokens; the access token with `access_scopes` when narrower than the
/// grant's (the refresh token keeps its own, RFC 6749 §6).
fn mint(now: i64, access_scopes: Option<String>) -> Minted {
    let access = quota_core::ids::new_secret(crate::auth::USER_TOKEN_PREFIX);
    let refresh = quota_core::ids::new_secret(super::REFRESH_TOKEN_PREFIX);
    let rows = [
        NewToken {
            token_hash: hash_token(&access),
            kind: TokenKind::Access,
            expires_at: now + super::ACCESS_TOKEN_TTL_MS,
            scopes: access_scopes,
        },
        NewToken {
            token_hash: hash_token(&refresh),
            kind: TokenKind::Refresh,
            expires_at: now + super::REFRESH_TOKEN_TTL_MS,
            scopes: None,
        },
    ];
    Minted { access, refresh, rows }
}

/// The id_token's claims (OpenID Connect Core §2), per scope.
#[derive(Serialize)]
struct IdTokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    azp: &'a str,
    exp: i64,
    iat: i64,
    auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// Identity claims a token's scopes release: (email, email_verified, name). Accounts have no
/// display name, so `name` is the email address; emails are not verified by this build.
pub fn identity_claims(scopes: Scopes, email: &str) -> (Option<&str>, Option<bool>, Option<&str>) {
    let with_email = scopes.contains(Scope::Email);
    (with_email.then_some(email), with_email.then_some(false), scopes.contains(Scope::Profile).then_some(email))
}

#[allow(clippy::too_many_arguments)]
async fn token_response(
    state: &SharedState,
    app: &App,
    user_id: &str,
    scopes: Scopes,
    minted: Minted,
    issuer: &str,
    nonce: Option<&str>,
    auth_time_ms: i64,
) -> Result<TokenResponse, OAuthError> {
    let id_token = if scopes.contains(Scope::Openid) {
        let now = state.clock.now_ms();
        let user = state
            .store
            .user_by_id(user_id)
            .await
            .map_err(store_error("id_token user"))?
            .ok_or_else(OAuthError::server_error)?;
        let key = state.oauth.signing.get(&state.store, &state.master_key, now).await?;
        let (email, email_verified, name) = identity_claims(scopes, &user.email);
        let claims = IdTokenClaims {
            iss: issuer,
            sub: user_id,
            aud: &app.client_id,
            azp: &app.client_id,
            iat: now / 1000,
            exp: now / 1000 + super::ID_TOKEN_TTL_SECS,
            auth_time: auth_time_ms / 1000,
            nonce,
            email,
            email_verified,
            name,
        };
        Some(key.sign(&claims)?)
    } else {
        None
    };
    Ok(TokenResponse {
        access_token: minted.access,
        token_type: "Bearer",
        expires_in: super::ACCESS_TOKEN_TTL_MS / 1000,
        refresh_token: minted.refresh,
        scope: scopes.to_string(),
        id_token,
    })
}

/// Revoke a grant and drop its tokens from the cache (code or refresh-token reuse).
async fn revoke_grant(state: &SharedState, grant_id: &str, why: &str) -> Result<(), OAuthError> {
    tracing::warn!(grant = %grant_id, "{why}: revoking the grant");
    state.store.revoke_grant(grant_id, state.clock.now_ms()).await.map_err(store_error("revoke grant"))?;
    state.oauth.tokens.evict_grant(grant_id);
    crate::changes::announce(state, &crate::changes::grant(grant_id)).await;
    Ok(())
}

/// `grant_type=authorization_code` (with PKCE).
pub async fn exchange_code(
    state: &SharedState,
    app: &App,
    form: &Form,
    issuer: &str,
) -> Result<TokenResponse, OAuthError> {
    let code = field(form, "code").ok_or_else(|| OAuthError::invalid_request("code is required"))?;
    let redirect_uri =
        field(form, "redirect_uri").ok_or_else(|| OAuthError::invalid_request("redirect_uri is required"))?;
    let verifier = field(form, "code_verifier");
    let code_hash = hash_token(code);
    let now = state.clock.now_ms();
    let row = state
        .store
        .code(&code_hash)
        .await
        .map_err(store_error("code lookup"))?
        .filter(|c| c.app_id == app.id)
        .ok_or_else(|| OAuthError::invalid_grant("unknown authorization code"))?;
    if row.used_at.is_some() {
        if let Some(g) = &row.grant_id {
            revoke_grant(state, g, "authorization code used twice").await?;
        }
        return Err(OAuthError::invalid_grant("authorization code already used; the tokens it issued are revoked"));
    }
    if row.expires_at <= now {
        return Err(OAuthError::invalid_grant("authorization code expired"));
    }
    if row.redirect_uri != redirect_uri {
        return Err(OAuthError::invalid_grant("redirect_uri does not match the authorization request"));
    }
    match (&row.code_challenge, verifier) {
        (Some(challenge), Some(v)) => {
            let method =
                pkce::Method::parse(row.code_challenge_method.as_deref()).map_err(OAuthError::invalid_grant)?;
            if !pkce::verify(method, challenge, v) {
                return Err(OAuthError::invalid_grant("code_verifier does not match the code_challenge"));
            }
        }
        (Some(_), None) => return Err(OAuthError::invalid_grant("code_verifier is required (PKCE)")),
        (None, Some(_)) => {
            return Err(OAuthError::invalid_grant(
                "code_verifier sent, but the authorization request had no code_challenge",
            ))
        }
        (None, None) if app.is_public() => {
            return Err(OAuthError::invalid_grant("PKCE is required for public clients"))
        }
        (None, None) => {}
    }
    let scopes = Scopes::parse(&row.scopes).map_err(|e| {
        tracing::error!(error = %e, "stored code scopes");
        OAuthError::server_error()
    })?;
    let grant = NewGrant {
        id: quota_core::ids::new_id("grt_"),
        app_id: app.id.clone(),
        user_id: row.user_id.clone(),
        scopes: row.scopes.clone(),
        nonce: row.nonce.clone(),
        auth_time: row.auth_time,
    };
    let minted = mint(now, None);
    match state.store.exchange_code(&code_hash, &grant, &minted.rows, now).await.map_err(store_error("exchange"))? {
        Ok(()) => {}
        Err(ExchangeError::AlreadyUsed) => {
            // Another request used the code at the same moment: that is reuse too.
            let first = state.store.code(&code_hash).await.map_err(store_error("code lookup"))?;
            if let Some(g) = first.and_then(|c| c.grant_id) {
                revoke_grant(state, &g, "authorization code used twice").await?;
            }
            return Err(OAuthError::invalid_grant("authorization code already used; the tokens it issued are revoked"));
        }
        Err(ExchangeError::NotConnected) => {
            return Err(OAuthError::invalid_grant("the user has disconnected this app"));
        }
    }
    token_response(state, app, &row.user_id, scopes, minted, issuer, row.nonce.as_deref(), row.auth_time).await
}

/// `grant_type=refresh_token`: rotate, detecting reuse.
pub async fn refresh(state: &SharedState, app: &App, form: &Form, issuer: &str) -> Result<TokenResponse, OAuthError> {
    let token = field(form, "refresh_token").ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
    let hash = hash_token(token);
    let now = state.clock.now_ms();
    let row = state
        .store
        .token(&hash)
        .await
        .map_err(store_error("refresh lookup"))?
        .filter(|t| t.kind == TokenKind::Refresh && t.app_id == app.id)
        .ok_or_else(|| OAuthError::invalid_grant("unknown refresh token"))?;
    if row.revoked_at.is_some() || row.grant_revoked_at.is_some() {
        return Err(OAuthError::invalid_grant("refresh token revoked"));
    }
    if row.used_at.is_some() {
        revoke_grant(state, &row.grant_id, "rotated refresh token used again").await?;
        return Err(OAuthError::invalid_grant("refresh token already used; the whole grant is revoked"));
    }
    if row.expires_at <= now {
        return Err(OAuthError::invalid_grant("refresh token expired"));
    }
    let granted = Scopes::parse(&row.scopes).map_err(|_| OAuthError::server_error())?;
    // A narrower `scope` gets tokens with just that scope (RFC 6749 §6); omitted: the grant's.
    let scopes = match field(form, "scope") {
        Some(asked) => {
            let asked = Scopes::parse(asked).map_err(OAuthError::invalid_scope)?;
            if asked.is_empty() || !asked.is_subset_of(granted) {
                return Err(OAuthError::invalid_scope("a refresh can narrow the grant's scopes, not add to them"));
            }
            asked
        }
        None => granted,
    };
    let minted = mint(now, (scopes != granted).then(|| scopes.to_string()));
    match state
        .store
        .rotate_refresh_token(&hash, &row.grant_id, &minted.rows, now)
        .await
        .map_err(store_error("rotate"))?
    {
        Ok(()) => {}
        Err(ExchangeError::AlreadyUsed) => {
            revoke_grant(state, &row.grant_id, "refresh token used twice at once").await?;
            return Err(OAuthError::invalid_grant("refresh token already used; the whole grant is revoked"));
        }
        Err(ExchangeError::NotConnected) => {
            return Err(OAuthError::invalid_grant("the user has disconnected this app"));
        }
    }
    token_response(state, app, &row.user_id, scopes, minted, issuer, None, row.grant_auth_time).await
}

/// The `user.connected` / `user.disconnected` outbox event for a connection.
pub fn connection_event(kind: EventKind, app: &App, user_id: &str, now: i64) -> OutboxEvent {
    OutboxEvent::new(kind.as_str(), &app.developer_id, json!({"app_id": app.id, "user_id": user_id}), now)
}

/// End a user's connection to an app: its tokens stop working at once (on this instance: the
/// cache is evicted after the commit). `false` if it was not connected.
pub async fn disconnect(state: &SharedState, app: &App, user_id: &str) -> Result<bool, StoreError> {
    let now = state.clock.now_ms();
    let event = connection_event(EventKind::UserDisconnected, app, user_id, now);
    let ended = state.store.disconnect(user_id, &app.id, now, event).await?;
    state.oauth.tokens.evict_connection(user_id, &app.id);
    crate::changes::announce(state, &crate::changes::connection(user_id, &app.id)).await;
    if ended {
        tracing::info!(app = %app.id, user = %user_id, "connection ended");
    }
    Ok(ended)
}

/// RFC 7009: revoke a token of this client. Unknown tokens and other clients' tokens are not
/// an error (nothing is revealed). A valid token ends the user's connection to the app.
pub async fn revoke(state: &SharedState, app: &App, form: &Form) -> Result<(), OAuthError> {
    let token = field(form, "token").ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    let Some(row) = state.store.token(&hash_token(token)).await.map_err(store_error("revoke lookup"))? else {
        return Ok(());
    };
    if row.app_id != app.id {
        return Ok(());
    }
    disconnect(state, app, &row.user_id).await.map_err(store_error("disconnect"))?;
    Ok(())
}
