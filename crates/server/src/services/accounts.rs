//! Accounts (SPEC §1): sign-up with its welcome credits, sign-in behind the per-IP limit and
//! the per-account lockout, sessions, the wallet balance, sign-out; and the operator's
//! accounts for `quota admin` (no server running: the store directly). Every way in — the
//! JSON routes, the dashboard's and the OAuth page's forms, the CLI — calls these. Not here:
//! reading the session cookie or the client's IP (the HTTP layer), JSON or HTML.

use crate::app::SharedState;
use crate::auth::{SESSION_COOKIE, SESSION_PREFIX};
use crate::error::{internal, ApiError};
use crate::secrets::{decoy_password_hash, hash_password, hash_token, verify_password};
use axum::http::StatusCode;
use quota_core::{AccountId, Credits, Transfer};
use quota_store::{now_ms, Store, StoreError, User};
use std::net::IpAddr;

/// Longest password accepted (bounds the hashing work an attacker can ask for).
const PASSWORD_MAX_CHARS: usize = 1024;
const PASSWORD_MIN_CHARS: usize = 8;
const EMAIL_MAX_CHARS: usize = 254;

/// A normalized email: trimmed, lower-cased, one `@` with text on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, ApiError> {
        let email = raw.trim().to_lowercase();
        let ok = email.len() <= EMAIL_MAX_CHARS
            && email
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty() && !domain.contains('@'))
            && !email.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_email",
                "email must look like name@example.com",
            ));
        }
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password a new account may have: 8 to 1024 characters.
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Password, ApiError> {
        let n = raw.chars().count();
        let weak = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "weak_password", m);
        if n < PASSWORD_MIN_CHARS {
            return Err(weak(format!("password must be at least {PASSWORD_MIN_CHARS} characters")));
        }
        if n > PASSWORD_MAX_CHARS {
            return Err(weak(format!("password must be at most {PASSWORD_MAX_CHARS} characters")));
        }
        Ok(Password(raw.to_string()))
    }
}

/// The argon2 hash of a password, computed off the async threads.
async fn hash(password: &Password) -> Result<String, ApiError> {
    let password = password.0.clone();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(internal("hash task"))?
        .map_err(internal("hash"))
}

/// The user row of a new account (409 `email_exists` when the email is taken).
async fn insert_user(store: &Store, email: &Email, password: &Password) -> Result<User, ApiError> {
    let hash = hash(password).await?;
    let id = quota_core::ids::new_id("usr_");
    match store.create_user(&id, email.as_str(), &hash).await {
        Ok(u) => Ok(u),
        Err(StoreError::Conflict) => {
            Err(ApiError::new(StatusCode::CONFLICT, "email_exists", "an account with this email exists"))
        }
        Err(e) => Err(internal("create user")(e)),
    }
}

/// Create an account and grant its welcome credits, through the ledger.
pub async fn create_account(state: &SharedState, email: &Email, password: &Password) -> Result<User, ApiError> {
    let user = insert_user(&state.store, email, password).await?;
    if state.config.welcome_credits > 0 {
        state
            .ledger
            .transfer(welcome_transfer(&user.id, state.config.welcome_credits))
            .await
            .map_err(internal("welcome credits"))?;
    }
    Ok(user)
}

/// The welcome grant, from the promotions account, once per account (the id is derived).
pub fn welcome_transfer(user_id: &str, amount: i64) -> Transfer {
    quota_core::transfers::welcome(user_id, Credits::new(amount), now_ms())
}

/// A signed-in session.
pub struct Session {
    pub token: String,
    pub expires_at: i64,
    /// The `quota_session` Set-Cookie value.
    pub set_cookie: String,
}

/// A new session for `user`.
pub async fn new_session(state: &SharedState, user: &User) -> Result<Session, ApiError> {
    let token = quota_core::ids::new_secret(SESSION_PREFIX);
    let expires_at = now_ms() + (state.config.session_ttl_secs as i64) * 1000;
    state.store.create_session(&hash_token(&token), &user.id, expires_at).await.map_err(internal("create session"))?;
    let set_cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        state.config.session_ttl_secs,
        if state.config.cookie_secure { "; Secure" } else { "" }
    );
    Ok(Session { token, expires_at, set_cookie })
}

/// End a session (by its token's hash).
pub async fn end_session(state: &SharedState, token_hash: &str) -> Result<(), ApiError> {
    state.store.revoke_session(token_hash).await.map_err(internal("logout"))
}

/// The account's wallet balance.
pub async fn balance(state: &SharedState, user_id: &str) -> Result<Credits, ApiError> {
    state.ledger.balance(&AccountId::wallet(user_id)).await.map_err(internal("balance"))
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
    let email = Email::parse(email)?;
    let password = Password::parse(password)?;
    create_account(state, &email, &password).await
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

/// `quota admin create-account`: the same user row and welcome grant as a sign-up, committed
/// straight to the store (a running server picks the transfer up within its ledger tick).
pub async fn create_offline(
    store: &Store,
    email: &Email,
    password: &Password,
    welcome_credits: i64,
) -> anyhow::Result<User> {
    let user = insert_user(store, email, password).await.map_err(|e| match e.code {
        "email_exists" => anyhow::anyhow!("an account with email {} exists", email.as_str()),
        _ => anyhow::anyhow!(e.message),
    })?;
    if welcome_credits > 0 {
        store.commit_direct(&[welcome_transfer(&user.id, welcome_credits)], "cli").await?;
    }
    Ok(user)
}

/// `quota admin credit`: credit a wallet from the platform's adjustments account; the balance
/// after.
pub async fn admin_credit(store: &Store, email: &str, amount: Credits) -> anyhow::Result<i64> {
    let email = email.trim().to_lowercase();
    let user = store.user_by_email(&email).await?.ok_or_else(|| anyhow::anyhow!("no account with email {email}"))?;
    let transfer = quota_core::transfers::admin_credit(&user.id, amount, now_ms());
    store.commit_direct(&[transfer], "cli").await?;
    Ok(store.balance(&AccountId::wallet(&user.id)).await?)
}

/// `quota admin list-accounts`: every account with its wallet balance.
pub async fn list_with_balances(store: &Store) -> anyhow::Result<Vec<(User, i64)>> {
    Ok(store.list_users_with_balances().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(Email::parse("  Ada@Example.COM ").unwrap().as_str(), "ada@example.com");
        for bad in ["", "no-at-sign", "@x", "x@", "a b@c", "a@b@c"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_8_to_1024_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert_eq!(Password::parse(&"x".repeat(1025)).err().map(|e| e.code), Some("weak_password"));
    }
}
