//! SPEC §1 over JSON: register, login, me, logout. Thin: the client's IP and the session are
//! read here; the rules are [`crate::services::accounts`]'.

use crate::app::SharedState;
use crate::auth::SessionUser;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::services::accounts;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use quota_store::{clock::rfc3339, User};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    email: String,
    password: String,
}

async fn session_response(state: &SharedState, user: &User, status: StatusCode) -> Result<Response, ApiError> {
    let session = accounts::new_session(state, user).await?;
    let balance = accounts::balance(state, &user.id).await?;
    let body = json!({
        "user": {"id": user.id, "email": user.email, "balance": balance},
        "session_token": session.token,
        "expires_at": rfc3339(session.expires_at),
    });
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&session.set_cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[utoipa::path(
    post,
    path = "/auth/register",
    tag = "accounts",
    summary = "Create an account (welcome credits included) and a session",
    request_body = Credentials,
    responses(
        (status = 201, description = "created; the session is also set as the `quota_session` cookie", body = crate::openapi::schemas::SessionResponse),
        (status = 400, description = "`invalid_email`, `weak_password`, `bad_request`", body = crate::openapi::schemas::ErrorBody),
        (status = 409, description = "`email_exists`", body = crate::openapi::schemas::ErrorBody),
        (status = 429, description = "`rate_limit_exceeded`: too many sign-ups from this address", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn register(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    let ip = state.proxies.client(&peer, &headers);
    let user = accounts::sign_up(&state, ip, &c.email, &c.password).await?;
    tracing::info!(user = %user.id, "account registered");
    session_response(&state, &user, StatusCode::CREATED).await
}

#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "accounts",
    summary = "Sign in: a new session",
    request_body = Credentials,
    responses(
        (status = 200, description = "signed in; the session is also set as the `quota_session` cookie", body = crate::openapi::schemas::SessionResponse),
        (status = 401, description = "`invalid_credentials`", body = crate::openapi::schemas::ErrorBody),
        (status = 429, description = "`rate_limit_exceeded`: too many failed sign-ins", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn login(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    let ip = state.proxies.client(&peer, &headers);
    let user = accounts::sign_in(&state, ip, &c.email, &c.password).await?;
    session_response(&state, &user, StatusCode::OK).await
}

#[utoipa::path(
    get,
    path = "/auth/me",
    tag = "accounts",
    summary = "The signed-in account",
    responses(
        (status = 200, description = "the account", body = crate::openapi::schemas::Account),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn me(State(state): State<SharedState>, session: SessionUser) -> Result<Json<serde_json::Value>, ApiError> {
    let balance = accounts::balance(&state, &session.user.id).await?;
    Ok(Json(json!({"id": session.user.id, "email": session.user.email, "balance": balance})))
}

#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "accounts",
    summary = "End the session",
    responses(
        (status = 200, description = "ended; the cookie is cleared", body = crate::openapi::schemas::Success),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn logout(State(state): State<SharedState>, session: SessionUser) -> Result<Response, ApiError> {
    accounts::end_session(&state, &session.token_hash).await?;
    let mut resp = Json(json!({"success": true})).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("quota_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    Ok(resp)
}
