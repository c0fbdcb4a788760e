//! SPEC §5: an end user's connected apps (`/account/connections`): what each may do, what the
//! user spent through it, and disconnecting it (its tokens stop working at once).

use crate::app::SharedState;
use crate::auth::SessionUser;
use crate::error::{internal, ApiError};
use crate::routes::apps::scope_list;
use crate::routes::PageQuery;
use axum::extract::{Path, Query, State};
use axum::Json;
use quota_store::clock::rfc3339;
use serde_json::{json, Value};

pub async fn list(
    State(state): State<SharedState>,
    session: SessionUser,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let connections = state.store.connections_of(&session.user.id).await.map_err(internal("list connections"))?;
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
    session: SessionUser,
    Path(app_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = state
        .store
        .app(&app_id)
        .await
        .map_err(internal("read app"))?
        .ok_or_else(|| ApiError::not_found("connection"))?;
    let ended =
        crate::oauth::tokens::disconnect(&state, &app, &session.user.id).await.map_err(internal("disconnect"))?;
    if !ended {
        return Err(ApiError::not_found("connection"));
    }
    Ok(Json(json!({"success": true, "app_id": app.id})))
}
