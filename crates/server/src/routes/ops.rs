//! Operational endpoints and fallbacks.

use crate::app::SharedState;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "The process is up",
    responses(
        (status = 200, description = "ok", body = crate::openapi::schemas::Status),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "The database answers",
    responses(
        (status = 200, description = "ready", body = crate::openapi::schemas::Status),
        (status = 503, description = "`internal_error`: the database is not reachable", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn readyz(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await.map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "internal_error", "the database is not reachable")
    })?;
    Ok(Json(json!({"status": "ready"})))
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document (OpenAPI 3.1)",
    responses(
        (status = 200, description = "the document", body = crate::openapi::schemas::Empty),
        crate::openapi::Errors,
    ),
    security(())
)]
/// The OpenAPI document (SPEC §12), generated from the handlers' annotations ([`crate::openapi`]).
pub async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], crate::openapi::json())
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "bad_request", "method not allowed on this route")
}
