//! SPEC §5: a developer's OAuth apps — create (client secret shown once), list, read, update,
//! settings (`profit_margin` exactly as basis points, `welcome_credits`), connected users, and
//! delete (every connection and token under the app ends at once).

use crate::app::SharedState;
use crate::auth::SessionUser;
use crate::body::JsonBody;
use crate::error::{internal, ApiError};
use crate::oauth::{redirect, tokens::connection_event, Scope, Scopes, CLIENT_ID_PREFIX, CLIENT_SECRET_PREFIX};
use crate::routes::keys::check_name;
use crate::routes::PageQuery;
use crate::secrets::hash_token;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use quota_core::Margin;
use quota_store::clock::rfc3339;
use quota_store::oauth::{App, AppUser};
use quota_store::StoreError;
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest per-app welcome grant: $1,000.
const WELCOME_CREDITS_MAX: i64 = 1_000_000_000;
/// Scopes an app gets when it does not say.
const DEFAULT_SCOPES: &str = "openid profile email credits.read credits.spend";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    name: String,
    redirect_uris: Vec<String>,
    allowed_scopes: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
    profit_margin: Option<Value>,
    welcome_credits: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    name: Option<String>,
    redirect_uris: Option<Vec<String>>,
    allowed_scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    profit_margin: Option<Value>,
    welcome_credits: Option<i64>,
}

fn check_redirect_uris(uris: Vec<String>) -> Result<Vec<String>, ApiError> {
    if uris.is_empty() || uris.len() > redirect::REDIRECT_URIS_MAX {
        return Err(ApiError::bad_request(format!(
            "redirect_uris must list 1 to {} URIs",
            redirect::REDIRECT_URIS_MAX
        )));
    }
    for uri in &uris {
        redirect::check_registrable(uri).map_err(ApiError::bad_request)?;
    }
    Ok(uris)
}

fn check_scopes(scopes: &[String]) -> Result<String, ApiError> {
    let set = Scopes::parse(&scopes.join(" ")).map_err(|e| ApiError::bad_request(format!("allowed_scopes: {e}")))?;
    if set.is_empty() || scopes.iter().any(|s| s.contains(' ')) {
        return Err(ApiError::bad_request("allowed_scopes must list one or more scopes, one per string"));
    }
    Ok(set.to_string())
}

/// `profit_margin` as a JSON number (`0.25`) or decimal string (`"0.25"`), exactly: at most
/// four decimals, 0 to 10.
fn parse_margin(v: &Value) -> Result<Margin, ApiError> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return Err(ApiError::bad_request("profit_margin must be a number between 0 and 10")),
    };
    Margin::parse_decimal(&text).map_err(ApiError::bad_request)
}

fn check_welcome(credits: i64) -> Result<i64, ApiError> {
    if !(0..=WELCOME_CREDITS_MAX).contains(&credits) {
        return Err(ApiError::bad_request(format!("welcome_credits must be between 0 and {WELCOME_CREDITS_MAX}")));
    }
    Ok(credits)
}

fn margin_json(bps: u32) -> Value {
    let text = Margin::from_bps(bps).map(|m| m.to_decimal_string()).unwrap_or_else(|_| "0".into());
    serde_json::from_str(&text).unwrap_or(json!(0))
}

/// A stored scope string as a JSON list.
pub fn scope_list(scopes: &str) -> Vec<&str> {
    scopes.split(' ').filter(|s| !s.is_empty()).collect()
}

pub fn app_json(a: &App) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "client_id": a.client_id,
        "token_endpoint_auth_method": a.token_endpoint_auth_method(),
        "redirect_uris": a.redirect_uris,
        "allowed_scopes": scope_list(&a.allowed_scopes),
        "profit_margin": margin_json(a.profit_margin_bps),
        "profit_margin_bps": a.profit_margin_bps,
        "welcome_credits": a.welcome_credits,
        "created_at": rfc3339(a.created_at),
        "updated_at": rfc3339(a.updated_at),
    })
}

async fn owned_app(state: &SharedState, session: &SessionUser, id: &str) -> Result<App, ApiError> {
    state
        .store
        .app_of(&session.user.id, id)
        .await
        .map_err(internal("read app"))?
        .ok_or_else(|| ApiError::not_found("app"))
}

pub async fn create(
    State(state): State<SharedState>,
    session: SessionUser,
    JsonBody(body): JsonBody<CreateApp>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = check_name(&body.name)?;
    let redirect_uris = check_redirect_uris(body.redirect_uris)?;
    crate::account_caps::ensure_room(&state, crate::account_caps::Capped::Apps, &session.user.id).await?;
    let allowed_scopes = match &body.allowed_scopes {
        Some(s) => check_scopes(s)?,
        None => DEFAULT_SCOPES.to_string(),
    };
    let public = match body.token_endpoint_auth_method.as_deref() {
        None | Some("client_secret_post") => false,
        Some("none") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "token_endpoint_auth_method must be client_secret_post or none, got `{other}`"
            )))
        }
    };
    let margin = body.profit_margin.as_ref().map(parse_margin).transpose()?.unwrap_or(Margin::ZERO);
    let welcome_credits = body.welcome_credits.map(check_welcome).transpose()?.unwrap_or(0);
    let secret = (!public).then(|| quota_core::ids::new_secret(CLIENT_SECRET_PREFIX));
    let now = state.clock.now_ms();
    let app = App {
        id: quota_core::ids::new_id("app_"),
        developer_id: session.user.id.clone(),
        name,
        client_id: quota_core::ids::new_id(CLIENT_ID_PREFIX),
        client_secret_hash: secret.as_deref().map(hash_token),
        redirect_uris,
        allowed_scopes,
        profit_margin_bps: margin.bps(),
        welcome_credits,
        created_at: now,
        updated_at: now,
    };
    state.store.create_app(&app).await.map_err(internal("create app"))?;
    tracing::info!(app = %app.id, developer = %app.developer_id, "app created");
    let mut out = app_json(&app);
    out["client_secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn list(
    State(state): State<SharedState>,
    session: SessionUser,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let apps = state.store.apps_of(&session.user.id).await.map_err(internal("list apps"))?;
    page.json(apps, app_json)
}

pub async fn get(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(app_json(&owned_app(&state, &session, &id).await?)))
}

async fn save(state: &SharedState, mut app: App) -> Result<Json<Value>, ApiError> {
    app.updated_at = state.clock.now_ms();
    match state.store.update_app(&app).await {
        Ok(()) => {}
        Err(StoreError::NotFound) => return Err(ApiError::not_found("app")),
        Err(e) => return Err(internal("update app")(e)),
    }
    // Cached tokens carry the app's markup: the next request reads the new one.
    state.oauth.tokens.evict_app(&app.id);
    crate::changes::announce(state, &crate::changes::app(&app.id)).await;
    Ok(Json(app_json(&app)))
}

pub async fn update(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateApp>,
) -> Result<Json<Value>, ApiError> {
    let mut app = owned_app(&state, &session, &id).await?;
    if let Some(name) = &body.name {
        app.name = check_name(name)?;
    }
    if let Some(uris) = body.redirect_uris {
        app.redirect_uris = check_redirect_uris(uris)?;
    }
    if let Some(scopes) = &body.allowed_scopes {
        app.allowed_scopes = check_scopes(scopes)?;
    }
    save(&state, app).await
}

pub async fn settings(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AppSettings>,
) -> Result<Json<Value>, ApiError> {
    let mut app = owned_app(&state, &session, &id).await?;
    if let Some(m) = &body.profit_margin {
        app.profit_margin_bps = parse_margin(m)?.bps();
    }
    if let Some(w) = body.welcome_credits {
        app.welcome_credits = check_welcome(w)?;
    }
    save(&state, app).await
}

pub async fn users(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let app = owned_app(&state, &session, &id).await?;
    let users = state.store.app_users(&app.id).await.map_err(internal("app users"))?;
    page.json(users, |u| {
        let (email, balance) = visible(u);
        json!({
            "user_id": u.user_id,
            "email": email,
            "balance": balance,
            "spend": u.spend,
            "scopes": scope_list(&u.scopes),
            "connected_at": rfc3339(u.connected_at),
        })
    })
}

/// What an app's owner sees of a connected user (SPEC §5): the email only if the user granted
/// `email`, the balance only with `credits.read` (else `None`); spend through the app always.
/// The JSON list and the dashboard both show this.
pub fn visible(u: &AppUser) -> (Option<&str>, Option<i64>) {
    let scopes = Scopes::parse(&u.scopes).unwrap_or_default();
    (
        scopes.contains(Scope::Email).then_some(u.email.as_str()),
        scopes.contains(Scope::CreditsRead).then_some(u.balance),
    )
}

pub async fn delete(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = owned_app(&state, &session, &id).await?;
    let now = state.clock.now_ms();
    let disconnected = match state
        .store
        .delete_app(&session.user.id, &app.id, now, |user| connection_event("user.disconnected", &app, user, now))
        .await
    {
        Ok(users) => users,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("app")),
        Err(e) => return Err(internal("delete app")(e)),
    };
    state.oauth.tokens.evict_app(&app.id);
    crate::changes::announce(&state, &crate::changes::app(&app.id)).await;
    tracing::info!(app = %app.id, users = disconnected.len(), "app deleted");
    Ok(Json(json!({"id": app.id, "deleted": true, "disconnected_users": disconnected.len()})))
}
