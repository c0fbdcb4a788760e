//! Redirect URIs (SPEC §5): what an app may register (https, or http only for `localhost` and
//! `127.0.0.1`; no fragment), exact matching against the registration, and building the
//! redirect back with `code`/`error` and `state`.

use url::Url;

/// Longest redirect URI accepted.
pub const REDIRECT_URI_MAX_LEN: usize = 2000;
/// Most redirect URIs one app may register.
pub const REDIRECT_URIS_MAX: usize = 20;

/// Check a redirect URI an app wants to register. Returns the reason it is refused.
pub fn check_registrable(uri: &str) -> Result<(), String> {
    if uri.len() > REDIRECT_URI_MAX_LEN {
        return Err(format!("redirect URIs must be at most {REDIRECT_URI_MAX_LEN} characters"));
    }
    let url = Url::parse(uri).map_err(|e| format!("`{uri}` is not an absolute URL: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("`{uri}` has a fragment; redirect URIs may not (RFC 6749 §3.1.2)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{uri}` carries credentials"));
    }
    match url.scheme() {
        "https" if url.host_str().is_some() => Ok(()),
        "http" if matches!(url.host_str(), Some("localhost" | "127.0.0.1")) => Ok(()),
        "http" => Err(format!("`{uri}`: plain http is allowed only for localhost and 127.0.0.1; use https")),
        _ => Err(format!("`{uri}`: redirect URIs must use https (or http on localhost)")),
    }
}

/// Exact string match against the registered URIs (no normalization, no prefix matching:
/// anything else is an open redirect waiting to happen).
pub fn is_registered(registered: &[String], uri: &str) -> bool {
    registered.iter().any(|r| r == uri)
}

/// `uri` with `params` appended to its query (it may already have one).
pub fn with_params(uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut url = Url::parse(uri).ok()?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    Some(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_can_be_registered() {
        for ok in ["https://app.example.com/cb", "http://localhost:3000/cb", "http://127.0.0.1/cb?x=1"] {
            assert!(check_registrable(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://app.example.com/cb",
            "https://app.example.com/cb#frag",
            "javascript:alert(1)",
            "/relative",
            "ftp://example.com/",
            "https://user:pw@example.com/cb",
            "http://localhost.evil.com/cb",
        ] {
            assert!(check_registrable(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_is_exact() {
        let reg = vec!["https://app.example.com/cb".to_string()];
        assert!(is_registered(&reg, "https://app.example.com/cb"));
        for other in ["https://app.example.com/cb/", "https://app.example.com/cb?x", "https://APP.example.com/cb"] {
            assert!(!is_registered(&reg, other), "{other}");
        }
    }

    #[test]
    fn params_are_appended_and_encoded() {
        assert_eq!(
            with_params("https://a.example/cb?x=1", &[("code", "c d"), ("state", "s&t")]).unwrap(),
            "https://a.example/cb?x=1&code=c+d&state=s%26t"
        );
    }
}
