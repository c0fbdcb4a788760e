//! Quota's OAuth 2.1 / OpenID Connect authorization server (SPEC §5): the rules behind
//! `/oauth/*`, apps' client authentication, codes, grants and tokens, and the in-memory cache
//! that admits user access tokens on the request path.
//!
//! The HTTP handlers are in `routes::oauth`; this module holds what they decide with. Not here:
//! persistence (`quota_store::oauth`), the ledger (user billing happens in `gateway`).

pub mod csrf;
pub mod jwt;
pub mod pages;
pub mod pkce;
pub mod redirect;
pub mod scopes;
pub mod tokens;

pub use scopes::{Scope, Scopes};
pub use tokens::{OAuthError, TokenCache};

/// An authorization code lives 10 minutes.
pub const CODE_TTL_MS: i64 = 10 * 60 * 1000;
/// An access token lives 1 hour.
pub const ACCESS_TOKEN_TTL_MS: i64 = 3600 * 1000;
/// A refresh token lives 30 days (and rotates on every use).
pub const REFRESH_TOKEN_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// An id_token is valid 1 hour.
pub const ID_TOKEN_TTL_SECS: i64 = 3600;

pub const CLIENT_ID_PREFIX: &str = "quota_client_";
pub const CLIENT_SECRET_PREFIX: &str = "quota_secret_";
pub const REFRESH_TOKEN_PREFIX: &str = "quota_refresh_";
pub const CODE_PREFIX: &str = "quota_code_";

/// Longest `state` and `nonce` accepted on `/oauth/authorize`.
pub const STATE_MAX_LEN: usize = 1024;
pub const NONCE_MAX_LEN: usize = 512;

/// The authorization server's per-process state.
#[derive(Default)]
pub struct OAuthState {
    pub tokens: TokenCache,
    pub signing: jwt::SigningKeys,
    pub csrf: csrf::Csrf,
}

/// The issuer URL: `public_url` from the configuration, else `http://` + the request's Host
/// (a local or development setup). Production deployments behind TLS set `public_url`.
pub fn issuer(config: &crate::config::Config, headers: &axum::http::HeaderMap) -> String {
    if let Some(url) = config.public_url.as_deref().filter(|u| !u.is_empty()) {
        return url.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}
