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

#[derive(Deserialize)]
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

pub async fn me(State(state): State<SharedState>, session: SessionUser) -> Result<Json<serde_json::Value>, ApiError> {
    let balance = accounts::balance(&state, &session.user.id).await?;
    Ok(Json(json!({"id": session.user.id, "email": session.user.email, "balance": balance})))
}

pub async fn logout(State(state): State<SharedState>, session: SessionUser) -> Result<Response, ApiError> {
    accounts::end_session(&state, &session.token_hash).await?;
    let mut resp = Json(json!({"success": true})).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("quota_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    Ok(resp)
}
