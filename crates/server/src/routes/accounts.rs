//! SPEC §1: register, login, me, logout. Welcome credits come from the platform promotions
//! account through the ledger, under a transfer id derived from the account so they are granted
//! once.

use crate::app::SharedState;
use crate::auth::{SessionUser, SESSION_COOKIE, SESSION_PREFIX};
use crate::body::JsonBody;
use crate::error::{internal, ApiError};
use crate::secrets::{decoy_password_hash, hash_password, hash_token, verify_password};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use quota_core::{AccountId, Credits, Transfer};
use quota_store::{clock::rfc3339, now_ms, StoreError, User};
use serde::Deserialize;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};

/// Longest password accepted (bounds the hashing work an attacker can ask for).
const PASSWORD_MAX_CHARS: usize = 1024;
const PASSWORD_MIN_CHARS: usize = 8;
const EMAIL_MAX_CHARS: usize = 254;

#[derive(Deserialize)]
pub struct Credentials {
    email: String,
    password: String,
}

/// A normalized email: trimmed, lower-cased, one `@` with text on both sides.
pub fn parse_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let ok = email.len() <= EMAIL_MAX_CHARS
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty() && !domain.contains('@'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_email", "email must look like name@example.com"));
    }
    Ok(email)
}

pub fn check_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if n < PASSWORD_MIN_CHARS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "weak_password",
            format!("password must be at least {PASSWORD_MIN_CHARS} characters"),
        ));
    }
    if n > PASSWORD_MAX_CHARS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "weak_password",
            format!("password must be at most {PASSWORD_MAX_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Create an account and grant its welcome credits (used by the API and `quota admin`).
pub async fn create_account(state: &SharedState, email: &str, password: &str) -> Result<User, ApiError> {
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(internal("hash task"))?
        .map_err(internal("hash"))?;
    let id = quota_core::ids::new_id("usr_");
    let user = match state.store.create_user(&id, email, &hash).await {
        Ok(u) => u,
        Err(StoreError::Conflict) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "email_exists", "an account with this email exists"))
        }
        Err(e) => return Err(internal("create user")(e)),
    };
    if state.config.welcome_credits > 0 {
        state
            .ledger
            .transfer(welcome_transfer(&user.id, state.config.welcome_credits))
            .await
            .map_err(internal("welcome credits"))?;
    }
    Ok(user)
}

pub fn welcome_transfer(user_id: &str, amount: i64) -> Transfer {
    quota_core::transfers::welcome(user_id, Credits::new(amount), now_ms())
}

/// A new session for `user`: (token, expiry, the `quota_session` Set-Cookie value).
pub async fn new_session(state: &SharedState, user: &User) -> Result<(String, i64, String), ApiError> {
    let token = quota_core::ids::new_secret(SESSION_PREFIX);
    let expires_at = now_ms() + (state.config.session_ttl_secs as i64) * 1000;
    state.store.create_session(&hash_token(&token), &user.id, expires_at).await.map_err(internal("create session"))?;
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        state.config.session_ttl_secs,
        if state.config.cookie_secure { "; Secure" } else { "" }
    );
    Ok((token, expires_at, cookie))
}

async fn session_response(state: &SharedState, user: &User, status: StatusCode) -> Result<Response, ApiError> {
    let (token, expires_at, cookie) = new_session(state, user).await?;
    let balance = state.ledger.balance(&AccountId::wallet(&user.id)).await.map_err(internal("balance"))?;
    let body = json!({
        "user": {"id": user.id, "email": user.email, "balance": balance},
        "session_token": token,
        "expires_at": rfc3339(expires_at),
    });
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// The client's IP (SPEC §7): the TCP peer, or behind `trusted_proxies` the first untrusted
/// `X-Forwarded-For` address from the right.
pub(crate) fn client_ip(state: &SharedState, peer: &SocketAddr, headers: &HeaderMap) -> IpAddr {
    state.proxies.client(peer, headers)
}

/// A password sign-in by any way in (`/auth/login`, the `/oauth/authorize` and dashboard
/// forms): the per-IP login limit, then the per-account lockout, then the password. A failure
/// counts toward the email's lockout (whether or not the account exists); a success clears it.
pub async fn sign_in(state: &SharedState, ip: IpAddr, email: &str, password: &str) -> Result<User, ApiError> {
    crate::limit::check_one(&state.limiter, format!("ip:login:{ip}"), state.config.login_rate_limit_per_minute).await?;
    let normalized = email.trim().to_lowercase();
    state.limiter.lockout_check(&normalized).await?;
    match authenticate(state, &normalized, password).await {
        Ok(user) => {
            state.limiter.lockout_cleared(&normalized).await;
            Ok(user)
        }
        Err(e) => {
            if e.code == "invalid_credentials" {
                let window_us = (state.config.lockout_window_secs as i64).saturating_mul(1_000_000);
                state.limiter.lockout_failed(&normalized, state.config.lockout_failures, window_us).await;
            }
            Err(e)
        }
    }
}

/// A sign-up by any way in (`/auth/register`, the `/oauth/authorize` and dashboard forms):
/// the per-IP register limit, then the account with its welcome credits.
pub async fn sign_up(state: &SharedState, ip: IpAddr, email: &str, password: &str) -> Result<User, ApiError> {
    let bucket = crate::client_ip::limit_bucket(ip);
    let per_minute = state.config.register_rate_limit_per_minute;
    crate::limit::check_one(&state.limiter, format!("ip:register:{bucket}"), per_minute).await?;
    let email = parse_email(email)?;
    check_password(password)?;
    create_account(state, &email, password).await
}

/// Check an email and password (401 `invalid_credentials` alike for an unknown email and a
/// wrong password, in the same time).
pub async fn authenticate(state: &SharedState, email: &str, password: &str) -> Result<User, ApiError> {
    let invalid = || ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "email or password is incorrect");
    let email = email.trim().to_lowercase();
    if password.chars().count() > PASSWORD_MAX_CHARS {
        return Err(invalid());
    }
    let user = state.store.user_by_email(&email).await.map_err(internal("login lookup"))?;
    // Verify against a decoy when the email is unknown, so both cases take as long.
    let phc = user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| decoy_password_hash().to_string());
    let password = password.to_string();
    let ok =
        tokio::task::spawn_blocking(move || verify_password(&password, &phc)).await.map_err(internal("verify task"))?;
    match user {
        Some(u) if ok => Ok(u),
        _ => Err(invalid()),
    }
}

pub async fn register(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    let ip = client_ip(&state, &peer, &headers);
    let user = sign_up(&state, ip, &c.email, &c.password).await?;
    tracing::info!(user = %user.id, "account registered");
    session_response(&state, &user, StatusCode::CREATED).await
}

pub async fn login(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    let ip = client_ip(&state, &peer, &headers);
    let user = sign_in(&state, ip, &c.email, &c.password).await?;
    session_response(&state, &user, StatusCode::OK).await
}

pub async fn me(State(state): State<SharedState>, session: SessionUser) -> Result<Json<serde_json::Value>, ApiError> {
    let balance = state.ledger.balance(&AccountId::wallet(&session.user.id)).await.map_err(internal("balance"))?;
    Ok(Json(json!({"id": session.user.id, "email": session.user.email, "balance": balance})))
}

pub async fn logout(State(state): State<SharedState>, session: SessionUser) -> Result<Response, ApiError> {
    state.store.revoke_session(&session.token_hash).await.map_err(internal("logout"))?;
    let mut resp = Json(json!({"success": true})).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("quota_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(parse_email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in ["", "no-at-sign", "@x", "x@", "a b@c", "a@b@c"] {
            assert!(parse_email(bad).is_err(), "{bad}");
        }
    }
}
