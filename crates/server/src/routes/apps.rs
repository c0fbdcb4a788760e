//! SPEC §5: a developer's OAuth apps over JSON (session only), thin: parse the body into
//! [`crate::services::apps`]' typed input, call it, shape the answer. `profit_margin` is read
//! exactly (a JSON number or a decimal string) and shown both ways; the client secret is in
//! the answer to create only.

use crate::app::SharedState;
use crate::auth::SessionUser;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::routes::PageQuery;
use crate::services::apps::WelcomeCredits;
use crate::services::apps::{self as service, AllowedScopes, AppPatch, AppSettings, NewApp, RedirectUris};
use crate::services::Name;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use quota_core::Margin;
use quota_store::clock::rfc3339;
use quota_store::oauth::App;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    name: String,
    redirect_uris: Vec<String>,
    allowed_scopes: Option<Vec<String>>,
    /// `client_secret_post` (the default) or `none` (a public client, PKCE only).
    token_endpoint_auth_method: Option<String>,
    /// 0 to 10, at most four decimals: a JSON number or a decimal string.
    #[schema(value_type = Option<f64>)]
    profit_margin: Option<Value>,
    welcome_credits: Option<i64>,
}

impl CreateApp {
    fn parse(self) -> Result<NewApp, ApiError> {
        let name = Name::parse(&self.name)?;
        let redirect_uris = RedirectUris::parse(self.redirect_uris)?;
        let allowed_scopes = self.allowed_scopes.as_deref().map(AllowedScopes::parse).transpose()?;
        let public = match self.token_endpoint_auth_method.as_deref() {
            None | Some("client_secret_post") => false,
            Some("none") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "token_endpoint_auth_method must be client_secret_post or none, got `{other}`"
                )))
            }
        };
        Ok(NewApp {
            name,
            redirect_uris,
            allowed_scopes,
            public,
            margin: self.profit_margin.as_ref().map(parse_margin).transpose()?.unwrap_or(Margin::ZERO),
            welcome_credits: WelcomeCredits::parse(self.welcome_credits.unwrap_or(0))?,
        })
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    name: Option<String>,
    redirect_uris: Option<Vec<String>>,
    allowed_scopes: Option<Vec<String>>,
}

impl UpdateApp {
    fn parse(self) -> Result<AppPatch, ApiError> {
        Ok(AppPatch {
            name: self.name.as_deref().map(Name::parse).transpose()?,
            redirect_uris: self.redirect_uris.map(RedirectUris::parse).transpose()?,
            allowed_scopes: self.allowed_scopes.as_deref().map(AllowedScopes::parse).transpose()?,
        })
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    /// 0 to 10, at most four decimals: a JSON number or a decimal string.
    #[schema(value_type = Option<f64>)]
    profit_margin: Option<Value>,
    welcome_credits: Option<i64>,
}

impl SettingsBody {
    fn parse(self) -> Result<AppSettings, ApiError> {
        Ok(AppSettings {
            margin: self.profit_margin.as_ref().map(parse_margin).transpose()?,
            welcome_credits: self.welcome_credits.map(WelcomeCredits::parse).transpose()?,
        })
    }
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

#[utoipa::path(
    post,
    path = "/developers/apps",
    tag = "apps",
    summary = "Create an OAuth app: `client_id`, and `client_secret` shown once (none for public clients)",
    request_body = CreateApp,
    responses(
        (status = 201, description = "the app with its secret", body = crate::openapi::schemas::CreatedApp),
        (status = 403, description = "`limit_reached`", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn create(
    State(state): State<SharedState>,
    session: SessionUser,
    JsonBody(body): JsonBody<CreateApp>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let created = service::create(&state, &session.user.id, body.parse()?).await?;
    let mut out = app_json(&created.app);
    out["client_secret"] = json!(created.client_secret);
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(
    get,
    path = "/developers/apps",
    tag = "apps",
    summary = "The developer's apps (no secrets)",
    params(crate::routes::PageQuery),
    responses(
        (status = 200, description = "a page of apps", body = crate::openapi::schemas::Page<crate::openapi::schemas::App>),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn list(
    State(state): State<SharedState>,
    session: SessionUser,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    page.json(service::list(&state, &session.user.id).await?, app_json)
}

#[utoipa::path(
    get,
    path = "/developers/apps/{id}",
    tag = "apps",
    summary = "One app",
    params(("id" = String, Path, description = "the app id, `app_…`")),
    responses(
        (status = 200, description = "the app", body = crate::openapi::schemas::App),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn get(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(app_json(&service::get(&state, &session.user.id, &id).await?)))
}

#[utoipa::path(
    patch,
    path = "/developers/apps/{id}",
    tag = "apps",
    summary = "Change name, redirect_uris, allowed_scopes",
    request_body = UpdateApp,
    params(("id" = String, Path, description = "the app id, `app_…`")),
    responses(
        (status = 200, description = "the app", body = crate::openapi::schemas::App),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn update(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateApp>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(app_json(&service::update(&state, &session.user.id, &id, body.parse()?).await?)))
}

#[utoipa::path(
    patch,
    path = "/developers/apps/{id}/settings",
    tag = "apps",
    summary = "Set profit_margin (0 to 10, at most 4 decimals) and welcome_credits",
    request_body = SettingsBody,
    params(("id" = String, Path, description = "the app id, `app_…`")),
    responses(
        (status = 200, description = "the app", body = crate::openapi::schemas::App),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn settings(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SettingsBody>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(app_json(&service::settings(&state, &session.user.id, &id, body.parse()?).await?)))
}

#[utoipa::path(
    get,
    path = "/developers/apps/{id}/users",
    tag = "apps",
    summary = "Users connected to the app, with balance and spend through it",
    params(("id" = String, Path, description = "the app id, `app_…`"), crate::routes::PageQuery),
    responses(
        (status = 200, description = "a page of users", body = crate::openapi::schemas::Page<crate::openapi::schemas::AppUser>),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn users(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let users = service::users(&state, &session.user.id, &id).await?;
    page.json(users, |u| {
        let (email, balance) = service::visible(u);
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

#[utoipa::path(
    delete,
    path = "/developers/apps/{id}",
    tag = "apps",
    summary = "Delete the app: its connections and tokens end (`user.disconnected` for each)",
    params(("id" = String, Path, description = "the app id, `app_…`")),
    responses(
        (status = 200, description = "deleted", body = crate::openapi::schemas::DeletedApp),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn delete(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let deleted = service::delete(&state, &session.user.id, &id).await?;
    Ok(Json(json!({"id": deleted.app_id, "deleted": true, "disconnected_users": deleted.disconnected_users})))
}
