//! Every error code Quota answers with (SPEC §13), what causes it and what to do, in one table:
//! the `docs_url` each error carries (SPEC §14) and the `/docs/errors` page it points at are
//! both made from [`CODES`], so a code cannot be sent without being on the page (a test reads
//! the sources for codes missing here, and debug builds assert it when an error is made).
//!
//! Not here: building or sending errors (`crate::error`), the page's route (`crate::routes::docs`).

use std::sync::OnceLock;

/// One documented error code.
#[derive(Debug, Clone, Copy)]
pub struct ErrorDoc {
    pub code: &'static str,
    pub status: u16,
    /// What causes it.
    pub cause: &'static str,
    /// What the caller can do about it.
    pub remedy: &'static str,
}

const fn doc(status: u16, code: &'static str, cause: &'static str, remedy: &'static str) -> ErrorDoc {
    ErrorDoc { code, status, cause, remedy }
}

/// SPEC §13, in its order.
pub const CODES: &[ErrorDoc] = &[
    doc(400, "bad_request", "Malformed JSON, a missing field, a wrong type or a bad parameter; `message` names it.", "Fix the request as `message` says; it was not charged."),
    doc(400, "invalid_email", "Registration with an email that does not look like name@example.com.", "Send a valid email address."),
    doc(400, "weak_password", "Registration with a password shorter than 8 or longer than 1024 characters.", "Choose a password of 8 to 1024 characters."),
    doc(401, "invalid_api_key", "The API key or session is missing, malformed, unknown or revoked, or the wrong kind of credential for the route.", "Send `Authorization: Bearer sk-quota-…` (or `X-API-Key`) on /v1, a session (`sess_…`) on management routes; create a new key in the dashboard if it was revoked."),
    doc(401, "invalid_token", "The OAuth access or refresh token (or code) is bad, expired, revoked or issued to another client.", "Refresh the token at /oauth/token, or send the user through /oauth/authorize again."),
    doc(401, "invalid_credentials", "Sign-in with a wrong email or password.", "Check the email and password; repeated failures lock the account for a while."),
    doc(401, "user_token_required", "A key with billing_mode `user` was used without a user's access token.", "Send the user's `quota_token_…` as the bearer and the key as `X-API-Key`, or use a developer key."),
    doc(402, "insufficient_credits", "The paying wallet cannot cover the request's reservation or the transfer; `required` and `available` say by how much.", "Top up the wallet (/dashboard/wallet or POST /api/payments/checkout), or ask for fewer tokens (lower max_tokens)."),
    doc(402, "spend_limit_exceeded", "A key's or a connection's spend limit cannot cover the reservation; `limit` names which.", "Raise or wait out the spend limit, or lower max_tokens."),
    doc(403, "insufficient_scope", "The user token was not granted the scope this route needs (`credits.spend` for inference, `credits.read` for balance and models, `account.read`/`account.write` for the account, `apps.read`/`apps.write` for connections).", "Send the user through /oauth/authorize again asking for that scope."),
    doc(403, "app_mismatch", "The user token was issued to an app that does not belong to the key's owner (or to the key's own app).", "Use a key of the developer who owns the app the user authorized."),
    doc(403, "forbidden", "The credential may not do this (a sandbox key moving real credits, a cookie-only write without JSON, another account's object).", "Use a credential that may, as `message` says."),
    doc(403, "model_not_allowed", "The key's `allowed_models` does not include the requested model.", "Use an allowed model, or change the key's allowed_models."),
    doc(403, "limit_reached", "A per-account cap on keys, apps or webhook endpoints was reached.", "Delete ones you no longer use, or ask the operator to raise the cap."),
    doc(404, "not_found", "No such route or object (or it belongs to another account).", "Check the path and the id."),
    doc(404, "model_not_found", "The model is not in Quota's catalog, or not served on this route.", "List the models with GET /v1/models and use one of their ids."),
    doc(404, "user_not_found", "No user with this id (or external id) is connected to any of your apps.", "Fund or look up a user who connected one of your apps (their `sub` from /oauth/userinfo)."),
    doc(409, "email_exists", "Registration with an email that already has an account.", "Sign in instead, or use another email."),
    doc(409, "idempotency_conflict", "The Idempotency-Key was used before with a different request, is still in progress, or its first response was lost after it took effect.", "Use a new key for a new request; retry the same request with the same key later for its first answer."),
    doc(413, "payload_too_large", "The request body is over the configured limit (default 20 MiB).", "Send a smaller body."),
    doc(429, "rate_limit_exceeded", "Quota's own rate limit for this key, app user or client address; nothing was forwarded or charged.", "Wait `Retry-After` seconds; ask for a higher `rate_limit_per_minute` on the key if you need it."),
    doc(429, "rate_limit", "The provider is rate limiting Quota's requests; nothing was charged.", "Retry later, with backoff."),
    doc(502, "upstream_error", "The provider answered with an error or an answer Quota could not read.", "Retry; if it persists, the provider's status page may say more."),
    doc(503, "provider_unavailable", "The model's provider is not configured on this gateway.", "Ask the operator to configure it, or use a sandbox (test) key."),
    doc(504, "gateway_timeout", "The provider did not answer in time; nothing was charged.", "Retry, perhaps with a smaller request or a stream."),
    doc(500, "internal_error", "A bug or an unreachable database, logged with the request id; nothing was charged.", "Retry; if it persists, report the `x-request-id` to the operator."),
];

/// The documented code, if it is one.
pub fn lookup(code: &str) -> Option<&'static ErrorDoc> {
    CODES.iter().find(|d| d.code == code)
}

/// The path of the errors page.
pub const PAGE_PATH: &str = "/docs/errors";

static BASE: OnceLock<String> = OnceLock::new();

/// Make `docs_url` absolute under `public_url` (set once, at start-up; the first server of a
/// process wins). Without it `docs_url` is the page's path, relative to the gateway's own URL.
pub fn set_public_base(public_url: Option<&str>) {
    if let Some(url) = public_url.map(|u| u.trim_end_matches('/')).filter(|u| !u.is_empty()) {
        let _ = BASE.set(url.to_string());
    }
}

/// Where an error's code is explained: `<base>/docs/errors#<code>`.
pub fn docs_url(code: &str) -> String {
    format!("{}{PAGE_PATH}#{code}", BASE.get().map(String::as_str).unwrap_or(""))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Inline `code` spans for backticked words of the table's prose.
fn prose(text: &str) -> String {
    escape(text)
        .split('`')
        .enumerate()
        .map(|(i, part)| if i % 2 == 1 { format!("<code>{part}</code>") } else { part.to_string() })
        .collect()
}

/// The `/docs/errors` page: one section per code, its anchor the code itself.
pub fn page_html() -> String {
    let mut rows = String::new();
    for d in CODES {
        rows.push_str(&format!(
            "<section id=\"{code}\"><h2><a href=\"#{code}\"><code>{code}</code></a> <small>HTTP {status}</small></h2>\
             <p><strong>Cause.</strong> {cause}</p><p><strong>What to do.</strong> {remedy}</p></section>\n",
            code = d.code,
            status = d.status,
            cause = prose(d.cause),
            remedy = prose(d.remedy),
        ));
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Quota error codes</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}\
         section{{border-top:1px solid #ddd;padding:.5rem 0}}section:target{{background:#fff8d6}}h2{{font-size:1.1rem}}\
         small{{color:#666;font-weight:normal}}</style></head><body><h1>Error codes</h1>\
         <p>Every error is JSON: <code>{{\"error\": {{\"code\", \"message\", \"type\", \"hint\"?, \"docs_url\"}}}}</code>; \
         <code>docs_url</code> links to the code's section below. Codes never change meaning.</p>\n{rows}</body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_on_the_page() {
        let page = page_html();
        for (i, d) in CODES.iter().enumerate() {
            assert!(CODES[..i].iter().all(|o| o.code != d.code), "{} twice", d.code);
            assert!(page.contains(&format!("id=\"{}\"", d.code)), "{} not on the page", d.code);
        }
    }

    /// Every code the server's sources make an error with (a literal code given to
    /// `ApiError::new`, and the constructors) is in the table, so its `docs_url` resolves.
    #[test]
    fn every_code_in_the_sources_is_documented() {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut missing = Vec::new();
        let mut seen = 0;
        for text in rust_sources(std::path::Path::new(src)) {
            for code in codes_made_in(&text) {
                seen += 1;
                if lookup(&code).is_none() {
                    missing.push(code);
                }
            }
        }
        assert!(seen > 20, "the scan found too few codes ({seen}): has ApiError::new changed shape?");
        assert!(missing.is_empty(), "codes missing from error_catalog::CODES: {missing:?}");
    }

    fn rust_sources(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(rust_sources(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(std::fs::read_to_string(&path).unwrap());
            }
        }
        out
    }

    /// The string literal right after the first argument of each call of `ApiError::new`.
    fn codes_made_in(text: &str) -> Vec<String> {
        let mut codes = Vec::new();
        for (at, _) in text.match_indices("ApiError::new(") {
            let rest = &text[at + "ApiError::new(".len()..];
            let Some(comma) = rest.find(',') else { continue };
            let after = rest[comma + 1..].trim_start();
            if let Some(lit) = after.strip_prefix('"') {
                if let Some(end) = lit.find('"') {
                    codes.push(lit[..end].to_string());
                }
            }
        }
        codes
    }
}
