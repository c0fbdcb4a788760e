//! Operational endpoints and fallbacks.

use crate::app::SharedState;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers.
pub async fn readyz(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await.map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "internal_error", "the database is not reachable")
    })?;
    Ok(Json(json!({"status": "ready"})))
}

/// The OpenAPI document (SPEC §12), written by hand next to the routes it describes.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

pub async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "bad_request", "method not allowed on this route")
}
