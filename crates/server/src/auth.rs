//! Phase *admit* (DESIGN §1) and session authentication.
//!
//! Inference credentials (`/v1`) resolve to a [`Principal`]: who calls, who pays, in which
//! mode, under which app and scopes. API keys are looked up by hash in an in-memory cache (one
//! database read the first time a key is seen, none after); revoking or rotating a key evicts
//! it at once on this instance. Management routes take a session (`sess_…` bearer or the
//! `quota_session` cookie); each kind of credential is refused where the other belongs.

use crate::app::SharedState;
use crate::error::{internal, ApiError};
use crate::oauth::{Scope, Scopes};
use crate::secrets::hash_token;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use parking_lot::RwLock;
use quota_core::{AccountId, BillingMode, Margin};
use quota_store::oauth::AccessGrant;
use quota_store::{ApiKey, Store, User};
use std::collections::HashMap;
use std::sync::Arc;

pub const API_KEY_PREFIX: &str = "sk-quota-";
pub const SESSION_PREFIX: &str = "sess_";
pub const USER_TOKEN_PREFIX: &str = "quota_token_";
pub const SESSION_COOKIE: &str = "quota_session";

/// Who is calling an inference route and who pays.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The developer whose key (or app) makes the request.
    pub developer_id: String,
    pub key_id: Option<String>,
    pub mode: BillingMode,
    /// The wallet that is debited.
    pub payer: AccountId,
    /// The end user in user mode (or sandbox with a user token).
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    /// Markup applied on top of the base price (zero outside user mode).
    pub margin: Margin,
    /// The key's per-minute override, for the rate limiter.
    pub rate_limit_per_minute: Option<i64>,
    /// The key's setting: `/v1/messages` streams end with `event: quota_usage` (true without
    /// a key).
    pub quota_usage_event: bool,
}

impl Principal {
    pub fn sandbox(&self) -> bool {
        self.mode == BillingMode::Test
    }

    /// The scope of this caller's idempotency keys: the developer, the end user, and the mode,
    /// so a sandbox answer is never replayed to a production key (as Stripe keeps test and live
    /// apart).
    pub fn idempotency_scope(&self) -> String {
        format!("{}:{}:{}", self.developer_id, self.user_id.as_deref().unwrap_or("-"), self.mode)
    }
}

/// API keys by hash. Holds only live keys.
#[derive(Default)]
pub struct KeyCache {
    by_hash: RwLock<HashMap<String, Arc<ApiKey>>>,
    /// Bumped by every eviction, so a database read that raced with a revocation (here or
    /// announced by another instance) is not cached.
    generation: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    pub async fn lookup(&self, store: &Store, hash: &str) -> Result<Option<Arc<ApiKey>>, ApiError> {
        if let Some(k) = self.by_hash.read().get(hash) {
            return Ok(Some(k.clone()));
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        let Some(key) = store.live_key_by_hash(hash).await.map_err(internal("key lookup"))? else {
            return Ok(None);
        };
        let key = Arc::new(key);
        let mut map = self.by_hash.write();
        if self.generation.load(std::sync::atomic::Ordering::Acquire) == generation {
            map.insert(hash.to_string(), key.clone());
        }
        Ok(Some(key))
    }

    fn evict_where(&self, pred: impl Fn(&str, &ApiKey) -> bool) {
        let mut map = self.by_hash.write();
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        map.retain(|h, k| !pred(h, k));
    }

    /// Drop a key (revoked, rotated, or changed) so the next use reads it afresh.
    pub fn evict(&self, hash: &str) {
        self.evict_where(|h, _| h == hash);
    }

    /// Drop every cached key with this id (after a settings change).
    pub fn evict_id(&self, key_id: &str) {
        self.evict_where(|_, k| k.id == key_id);
    }

    /// Drop everything (changes may have been missed).
    pub fn clear(&self) {
        self.evict_where(|_, _| true);
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = header(headers, "authorization")?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Admit an inference request (SPEC §2 table): user tokens need `credits.spend`.
pub async fn admit(state: &SharedState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    admit_request(state, headers, None, Scope::CreditsSpend).await
}

/// [`admit`], also accepting the key as the `key` query parameter (SPEC §3.3: Gemini clients
/// send `?key=`); a key in a header wins over one in the query.
pub async fn admit_with_key_param(
    state: &SharedState,
    headers: &HeaderMap,
    key_param: Option<&str>,
) -> Result<Principal, ApiError> {
    admit_request(state, headers, key_param, Scope::CreditsSpend).await
}

/// [`admit`] for a route whose user tokens need `required` instead (`credits.read` for
/// `/v1/balance` and `/v1/models`).
pub async fn admit_with_scope(
    state: &SharedState,
    headers: &HeaderMap,
    required: Scope,
) -> Result<Principal, ApiError> {
    admit_request(state, headers, None, required).await
}

/// [`admit_with_scope`], also accepting the key as the `key` query parameter (Gemini's routes).
pub async fn admit_with_key_param_and_scope(
    state: &SharedState,
    headers: &HeaderMap,
    key_param: Option<&str>,
    required: Scope,
) -> Result<Principal, ApiError> {
    admit_request(state, headers, key_param, required).await
}

fn invalid_token(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
}

/// A live user access token (from the token cache; one database read the first time).
pub async fn user_access_token(state: &SharedState, token: &str) -> Result<Arc<AccessGrant>, ApiError> {
    state
        .oauth
        .tokens
        .lookup(&state.store, &hash_token(token), state.clock.now_ms())
        .await
        .map_err(internal("token lookup"))?
        .ok_or_else(|| invalid_token("unknown, expired or revoked user access token"))
}

/// The scopes a live token carries; 403 `insufficient_scope` unless `required` is among them.
pub fn require_scope(token: &AccessGrant, required: Scope) -> Result<Scopes, ApiError> {
    let scopes = Scopes::parse(&token.scopes).map_err(internal("stored token scopes"))?;
    if !scopes.contains(required) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("this user token was not granted the `{}` scope", required.as_str()),
        )
        .with_hint("ask the user to authorize the app again with that scope"));
    }
    Ok(scopes)
}

/// Resolve an API key (`X-API-Key`, its synonyms, or `Authorization: Bearer sk-quota-…`) for
/// routes that take only a key (funding). Also the key half of [`admit_with_scope`].
pub async fn admit_key(state: &SharedState, secret: Option<&str>) -> Result<Arc<ApiKey>, ApiError> {
    let Some(secret) = secret else {
        return Err(ApiError::invalid_api_key("missing API key")
            .with_hint("send `Authorization: Bearer sk-quota-…` or `X-API-Key: sk-quota-…`"));
    };
    if secret.starts_with(SESSION_PREFIX) {
        return Err(ApiError::invalid_api_key("session tokens cannot call /v1; use an API key (sk-quota-…)"));
    }
    if secret.starts_with(USER_TOKEN_PREFIX) || secret.starts_with(crate::oauth::REFRESH_TOKEN_PREFIX) {
        return Err(ApiError::invalid_api_key("this route takes the developer's API key, not a user token"));
    }
    if !secret.starts_with(API_KEY_PREFIX) {
        return Err(ApiError::invalid_api_key("malformed API key: Quota keys start with sk-quota-"));
    }
    state
        .keys
        .lookup(&state.store, &hash_token(secret))
        .await?
        .ok_or_else(|| ApiError::invalid_api_key("unknown or revoked API key"))
}

/// The API key on a request, wherever it is sent: `X-API-Key` (its synonyms), else a bearer
/// that is not a user token.
pub fn api_key_secret(headers: &HeaderMap) -> Option<&str> {
    header(headers, "x-api-key")
        .or_else(|| header(headers, "x-goog-api-key"))
        .or_else(|| bearer(headers).filter(|b| !b.starts_with(USER_TOKEN_PREFIX)))
}

/// Admit a `/v1` request whose user tokens need `required` (SPEC §2 table, §4.4, §5):
///
/// * a `developer` key: the key owner pays (a user token alongside is not used);
/// * a user token alone: the user pays base + the token's app markup;
/// * a `user` key + a user token: the same, and the token's app must be the key owner's (and
///   the key's own app, if it is bound to one), else 403 `app_mismatch`;
/// * a `test` key (+ optionally a user token, checked the same way): sandbox, the key owner
///   pays; with a token the user's scopes and balance are checked too.
async fn admit_request(
    state: &SharedState,
    headers: &HeaderMap,
    key_param: Option<&str>,
    required: Scope,
) -> Result<Principal, ApiError> {
    // `x-api-key` (the Anthropic SDK's header) and `X-API-Key` are the same header in HTTP;
    // `x-goog-api-key` is the Google GenAI SDK's.
    let api_key = header(headers, "x-api-key")
        .or_else(|| header(headers, "x-goog-api-key"))
        .or_else(|| key_param.map(str::trim).filter(|k| !k.is_empty()));
    let bearer = bearer(headers);
    if api_key.is_none() && bearer.is_some_and(|b| b.starts_with(crate::oauth::REFRESH_TOKEN_PREFIX)) {
        return Err(invalid_token("refresh tokens cannot call the API; exchange it at /oauth/token"));
    }
    let user_token = bearer.filter(|b| b.starts_with(USER_TOKEN_PREFIX));
    if api_key.is_none() {
        if let Some(token) = user_token {
            let t = user_access_token(state, token).await?;
            require_scope(&t, required)?;
            return user_principal(&t, None, BillingMode::User, AccountId::wallet(&t.user_id));
        }
    }
    let key = admit_key(state, api_key.or(bearer)).await?;
    match (key.billing_mode, user_token) {
        (BillingMode::User, None) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "user_token_required",
            "this key bills users: send the user's access token as `Authorization: Bearer quota_token_…` and the key as `X-API-Key`",
        )),
        (mode @ (BillingMode::User | BillingMode::Test), Some(token)) => {
            let t = user_access_token(state, token).await?;
            require_scope(&t, required)?;
            if t.developer_id != key.user_id || key.app_id.as_ref().is_some_and(|a| *a != t.app_id) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "app_mismatch",
                    "this user token was issued to an app that does not belong to this key's owner",
                )
                .with_hint("use a key of the developer who owns the app the user authorized"));
            }
            let payer = if mode == BillingMode::Test { AccountId::wallet(&key.user_id) } else { AccountId::wallet(&t.user_id) };
            user_principal(&t, Some(&key), mode, payer)
        }
        (mode, _) => Ok(Principal {
            developer_id: key.user_id.clone(),
            key_id: Some(key.id.clone()),
            mode,
            payer: AccountId::wallet(&key.user_id),
            user_id: None,
            app_id: key.app_id.clone(),
            margin: Margin::ZERO,
            rate_limit_per_minute: key.rate_limit_per_minute,
            quota_usage_event: key.quota_usage_event,
        }),
    }
}

fn user_principal(
    t: &AccessGrant,
    key: Option<&ApiKey>,
    mode: BillingMode,
    payer: AccountId,
) -> Result<Principal, ApiError> {
    Ok(Principal {
        developer_id: t.developer_id.clone(),
        key_id: key.map(|k| k.id.clone()),
        mode,
        payer,
        user_id: Some(t.user_id.clone()),
        app_id: Some(t.app_id.clone()),
        margin: Margin::from_bps(t.profit_margin_bps).map_err(internal("stored margin"))?,
        rate_limit_per_minute: key.and_then(|k| k.rate_limit_per_minute),
        quota_usage_event: key.is_none_or(|k| k.quota_usage_event),
    })
}

/// A signed-in account on a management route.
pub struct SessionUser {
    pub user: User,
    pub token_hash: String,
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|text| text.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, v)| *n == name && !v.is_empty())
        .map(|(_, v)| v)
}

/// The live session behind a session token, if any.
pub async fn session_user(state: &SharedState, token: &str) -> Result<Option<SessionUser>, ApiError> {
    if !token.starts_with(SESSION_PREFIX) {
        return Ok(None);
    }
    let token_hash = hash_token(token);
    let Some(session) = state.store.session(&token_hash).await.map_err(internal("session lookup"))? else {
        return Ok(None);
    };
    let user = state.store.user_by_id(&session.user_id).await.map_err(internal("session user"))?;
    Ok(user.map(|user| SessionUser { user, token_hash }))
}

/// The signed-in browser (the `quota_session` cookie) on a page such as `/oauth/authorize`.
pub async fn browser_session(state: &SharedState, headers: &HeaderMap) -> Result<Option<SessionUser>, ApiError> {
    match cookie(headers, SESSION_COOKIE) {
        Some(token) => session_user(state, token).await,
        None => Ok(None),
    }
}

fn session_token(parts: &Parts) -> Result<&str, ApiError> {
    if let Some(b) = bearer(&parts.headers) {
        if b.starts_with(API_KEY_PREFIX) {
            return Err(ApiError::invalid_api_key(
                "API keys cannot call management routes; sign in and use the session token",
            ));
        }
        return Ok(b);
    }
    if header(&parts.headers, "x-api-key").is_some() {
        return Err(ApiError::invalid_api_key(
            "API keys cannot call management routes; sign in and use the session token",
        ));
    }
    if let Some(value) = cookie(&parts.headers, SESSION_COOKIE) {
        // A browser sends the cookie with any request to this origin, including a form another
        // site submits. A write carried by the cookie alone must be JSON: a cross-site page can
        // only send that after a CORS preflight, which Quota never grants (defence beyond
        // `SameSite=Lax`).
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        let json = header(&parts.headers, "content-type")
            .is_some_and(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
        if !safe && !json {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a write authenticated by the quota_session cookie must send Content-Type: application/json",
            )
            .with_hint("send the session as `Authorization: Bearer sess_…`, or the body as JSON"));
        }
        return Ok(value);
    }
    Err(ApiError::invalid_api_key("missing session: send `Authorization: Bearer sess_…` or the quota_session cookie"))
}

impl FromRequestParts<SharedState> for SessionUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Self::Rejection> {
        let token = session_token(parts)?;
        if !token.starts_with(SESSION_PREFIX) {
            return Err(ApiError::invalid_api_key("malformed session token"));
        }
        session_user(state, token)
            .await?
            .ok_or_else(|| ApiError::invalid_api_key("unknown, expired or revoked session"))
    }
}

/// The scope a user token needs on a route about the user's own account (SPEC §14).
pub trait HolderScope: Send + Sync {
    const SCOPE: Scope;
}

macro_rules! holder_scopes {
    ($($name:ident => $scope:expr),* $(,)?) => {$(
        #[doc = concat!("A user token on this route needs `", stringify!($scope), "`.")]
        pub struct $name;
        impl HolderScope for $name {
            const SCOPE: Scope = $scope;
        }
    )*};
}

holder_scopes! {
    AccountRead => Scope::AccountRead,
    AccountWrite => Scope::AccountWrite,
    AppsRead => Scope::AppsRead,
    AppsWrite => Scope::AppsWrite,
}

/// Whoever a route about one's own account (`/account`, its connections) acts for: a signed-in
/// session, or a user access token granted `S::SCOPE` (else 403 `insufficient_scope`). API
/// keys are refused as on every management route.
pub struct AccountHolder<S: HolderScope> {
    pub user_id: String,
    /// The OAuth app whose token this is (`None` for a session).
    pub app_id: Option<String>,
    scope: std::marker::PhantomData<S>,
}

impl<S: HolderScope> FromRequestParts<SharedState> for AccountHolder<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Self::Rejection> {
        if let Some(token) = bearer(&parts.headers).filter(|b| b.starts_with(USER_TOKEN_PREFIX)) {
            let grant = user_access_token(state, token).await?;
            require_scope(&grant, S::SCOPE)?;
            return Ok(AccountHolder {
                user_id: grant.user_id.clone(),
                app_id: Some(grant.app_id.clone()),
                scope: std::marker::PhantomData,
            });
        }
        let session = SessionUser::from_request_parts(parts, state).await?;
        Ok(AccountHolder { user_id: session.user.id, app_id: None, scope: std::marker::PhantomData })
    }
}
