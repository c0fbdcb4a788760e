//! PKCE (RFC 7636): the code challenge sent to `/oauth/authorize` and the verifier sent to
//! `/oauth/token`. `S256` and `plain` (for compatibility, SPEC §5); compared in constant time.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How the challenge was derived from the verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    S256,
    Plain,
}

impl Method {
    /// RFC 7636 §4.3: absent means `plain`.
    pub fn parse(text: Option<&str>) -> Result<Method, String> {
        match text {
            None | Some("plain") => Ok(Method::Plain),
            Some("S256") => Ok(Method::S256),
            Some(other) => Err(format!("code_challenge_method must be S256 or plain, got `{other}`")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::S256 => "S256",
            Method::Plain => "plain",
        }
    }
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]` (a challenge has the same shape).
pub fn well_formed(text: &str) -> bool {
    (43..=128).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// Whether `verifier` answers `challenge` under `method`.
pub fn verify(method: Method, challenge: &str, verifier: &str) -> bool {
    if !well_formed(verifier) {
        return false;
    }
    let derived = match method {
        Method::Plain => verifier.to_string(),
        Method::S256 => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
    };
    derived.as_bytes().ct_eq(challenge.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_example_verifies() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(verify(Method::S256, challenge, verifier));
        assert!(!verify(Method::S256, challenge, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXx"));
        assert!(!verify(Method::Plain, challenge, verifier));
        assert!(verify(Method::Plain, verifier, verifier));
        assert!(!verify(Method::Plain, "short", "short"));
    }

    #[test]
    fn methods_parse_strictly() {
        assert_eq!(Method::parse(None), Ok(Method::Plain));
        assert_eq!(Method::parse(Some("S256")), Ok(Method::S256));
        assert!(Method::parse(Some("s256")).is_err());
    }
}
