//! CSRF tokens for the sign-in and consent forms: an HMAC-SHA256, under a per-process random
//! key, of what the form is bound to (the signed-in session for consent; a random pre-session
//! cookie for sign-in). A forged cross-site POST has neither the cookie nor the token. A
//! restart makes open forms stale (the user reloads the page); nothing is stored.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub struct Csrf {
    key: [u8; 32],
}

impl Csrf {
    pub fn new() -> Csrf {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        Csrf { key }
    }

    /// The token for a form of `purpose` bound to `binding`.
    pub fn token(&self, purpose: &str, binding: &str) -> String {
        // HMAC accepts keys of any length; this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(binding.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Constant-time check of a submitted token.
    pub fn verify(&self, purpose: &str, binding: &str, submitted: &str) -> bool {
        let expected = self.token(purpose, binding);
        !expected.is_empty() && expected.as_bytes().ct_eq(submitted.as_bytes()).into()
    }
}

impl Default for Csrf {
    fn default() -> Self {
        Csrf::new()
    }
}

/// The pre-session binding of a sign-in form's CSRF token: the value of cookie `name` if the
/// browser has one, else a new random value with the `Set-Cookie` header that stores it
/// (HttpOnly, `SameSite=Lax`, `Secure` when configured, scoped to `path`).
pub fn binding_cookie(
    headers: &axum::http::HeaderMap,
    name: &str,
    path: &str,
    secure: bool,
) -> (String, Option<String>) {
    match crate::auth::cookie(headers, name) {
        Some(c) => (c.to_string(), None),
        None => {
            let c = quota_core::ids::new_secret("");
            let secure = if secure { "; Secure" } else { "" };
            let header = format!("{name}={c}; Path={path}; HttpOnly; SameSite=Lax{secure}");
            (c, Some(header))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_bound_to_purpose_binding_and_key() {
        let a = super::Csrf::new();
        let t = a.token("consent", "sess1");
        assert!(a.verify("consent", "sess1", &t));
        assert!(!a.verify("consent", "sess2", &t));
        assert!(!a.verify("login", "sess1", &t));
        assert!(!a.verify("consent", "sess1", ""));
        assert!(!super::Csrf::new().verify("consent", "sess1", &t));
    }
}
