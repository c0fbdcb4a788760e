//! SPEC §5: an end user's connected apps (`/account/connections`): what each may do, what the
//! user spent through it, and disconnecting it (its tokens stop working at once). A session,
//! or a user token with `apps.read` (list) / `apps.write` (disconnect) (SPEC §14). Thin: the
//! caller, then [`crate::services::apps`].

use crate::app::SharedState;
use crate::auth::{AccountHolder, AppsRead, AppsWrite};
use crate::error::ApiError;
use crate::routes::apps::scope_list;
use crate::routes::PageQuery;
use crate::services::apps;
use axum::extract::{Path, Query, State};
use axum::Json;
use quota_store::clock::rfc3339;
use serde_json::{json, Value};

#[utoipa::path(
    get,
    path = "/account/connections",
    tag = "apps",
    summary = "The signed-in user's connected apps, with spend",
    params(crate::routes::PageQuery),
    responses(
        (status = 200, description = "a page of connections", body = crate::openapi::schemas::Page<crate::openapi::schemas::Connection>),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn list(
    State(state): State<SharedState>,
    holder: AccountHolder<AppsRead>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let connections = apps::connections(&state, &holder.user_id).await?;
    page.json(connections, |c| {
        json!({
            "app_id": c.app_id,
            "app_name": c.app_name,
            "scopes": scope_list(&c.scopes),
            "spend": c.spend,
            "connected_at": rfc3339(c.created_at),
        })
    })
}

#[utoipa::path(
    delete,
    path = "/account/connections/{app_id}",
    tag = "apps",
    summary = "Disconnect an app: its tokens stop working at once",
    params(("app_id" = String, Path, description = "the app id, `app_…`")),
    responses(
        (status = 200, description = "disconnected", body = crate::openapi::schemas::Disconnected),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn disconnect(
    State(state): State<SharedState>,
    holder: AccountHolder<AppsWrite>,
    Path(app_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app_id = apps::disconnect(&state, &holder.user_id, &app_id).await?;
    Ok(Json(json!({"success": true, "app_id": app_id})))
}
