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

pub async fn disconnect(
    State(state): State<SharedState>,
    holder: AccountHolder<AppsWrite>,
    Path(app_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app_id = apps::disconnect(&state, &holder.user_id, &app_id).await?;
    Ok(Json(json!({"success": true, "app_id": app_id})))
}
