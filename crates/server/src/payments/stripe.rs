//! Stripe, as Quota uses it (SPEC §10): a small client for the four REST calls Quota makes
//! (Checkout Session, Express account, account link, transfer) — form-encoded bodies, bearer
//! secret key, `Idempotency-Key` on every call that creates something — and the verification
//! of `Stripe-Signature` on incoming webhooks. Not a general Stripe SDK.
//!
//! The secret key is sent only in the `Authorization` header and never logged; errors carry
//! Stripe's own error message (which never contains the key).

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::time::Duration;

/// Largest clock difference accepted between a webhook's signed timestamp and now.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;
/// Largest Stripe response body read.
const RESPONSE_MAX_BYTES: usize = 1024 * 1024;

/// Why a Stripe call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered with an error object (`{"error": {"type", "code", "message"}}`).
    #[error("stripe {status} {kind}: {message}")]
    Api { status: u16, kind: String, code: Option<String>, message: String },
    /// Stripe could not be reached, or answered with something that is not Stripe's shape.
    #[error("stripe unreachable: {0}")]
    Transport(String),
}

/// A client bound to one account's secret key.
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    secret_key: String,
}

impl StripeClient {
    pub fn new(base: &str, secret_key: &str, timeout: Duration) -> Result<StripeClient, String> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(timeout)
            .build()
            .map_err(|e| format!("stripe http client: {e}"))?;
        Ok(StripeClient { http, base: base.trim_end_matches('/').to_string(), secret_key: secret_key.to_string() })
    }

    /// `POST {base}{path}` with a form-encoded body; the JSON object Stripe returns.
    async fn post(
        &self,
        path: &str,
        form: &[(&str, String)],
        idempotency_key: Option<&str>,
    ) -> Result<Value, StripeError> {
        let body = {
            let mut s = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in form {
                s.append_pair(k, v);
            }
            s.finish()
        };
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.secret_key)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(key) = idempotency_key {
            req = req.header("idempotency-key", key);
        }
        let resp = req.send().await.map_err(|e| StripeError::Transport(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| StripeError::Transport(e.without_url().to_string()))?;
        if bytes.len() > RESPONSE_MAX_BYTES {
            return Err(StripeError::Transport("response too large".into()));
        }
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|_| StripeError::Transport(format!("HTTP {status} with a body that is not JSON")))?;
        if !(200..300).contains(&status) {
            let e = &json["error"];
            return Err(StripeError::Api {
                status,
                kind: e["type"].as_str().unwrap_or("api_error").to_string(),
                code: e["code"].as_str().map(str::to_string),
                message: e["message"].as_str().unwrap_or("no message").to_string(),
            });
        }
        Ok(json)
    }

    fn field(json: &Value, name: &str) -> Result<String, StripeError> {
        json[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| StripeError::Transport(format!("response without `{name}`")))
    }

    /// Create a Checkout Session for one package; returns (session id, checkout URL).
    pub async fn create_checkout_session(&self, c: &CheckoutRequest<'_>) -> Result<(String, String), StripeError> {
        let form = [
            ("mode", "payment".to_string()),
            ("success_url", c.success_url.to_string()),
            ("cancel_url", c.cancel_url.to_string()),
            ("client_reference_id", c.user_id.to_string()),
            ("line_items[0][quantity]", "1".to_string()),
            ("line_items[0][price_data][currency]", "usd".to_string()),
            ("line_items[0][price_data][unit_amount]", c.price_cents.to_string()),
            ("line_items[0][price_data][product_data][name]", format!("Quota credits: {}", c.package_name)),
            ("metadata[quota_user_id]", c.user_id.to_string()),
            ("metadata[quota_package_id]", c.package_id.to_string()),
            ("metadata[quota_credits]", c.credits.to_string()),
        ];
        let json = self.post("/v1/checkout/sessions", &form, Some(c.idempotency_key)).await?;
        Ok((Self::field(&json, "id")?, Self::field(&json, "url")?))
    }

    /// Create an Express connected account for a developer; returns its id (`acct_…`).
    pub async fn create_express_account(&self, developer_id: &str, email: &str) -> Result<String, StripeError> {
        let form = [
            ("type", "express".to_string()),
            ("email", email.to_string()),
            ("capabilities[transfers][requested]", "true".to_string()),
            ("metadata[quota_developer_id]", developer_id.to_string()),
        ];
        // One account per developer, however often onboarding is started.
        let key = format!("quota-connect-{developer_id}");
        let json = self.post("/v1/accounts", &form, Some(&key)).await?;
        Self::field(&json, "id")
    }

    /// A fresh onboarding link for a connected account.
    pub async fn create_account_link(
        &self,
        account: &str,
        refresh_url: &str,
        return_url: &str,
    ) -> Result<String, StripeError> {
        let form = [
            ("account", account.to_string()),
            ("refresh_url", refresh_url.to_string()),
            ("return_url", return_url.to_string()),
            ("type", "account_onboarding".to_string()),
        ];
        let json = self.post("/v1/account_links", &form, None).await?;
        Self::field(&json, "url")
    }

    /// Move `amount_cents` to a connected account; returns the transfer id (`tr_…`).
    pub async fn create_transfer(
        &self,
        amount_cents: i64,
        destination: &str,
        payout_id: &str,
        idempotency_key: &str,
    ) -> Result<String, StripeError> {
        let form = [
            ("amount", amount_cents.to_string()),
            ("currency", "usd".to_string()),
            ("destination", destination.to_string()),
            ("transfer_group", payout_id.to_string()),
            ("metadata[quota_payout_id]", payout_id.to_string()),
        ];
        let json = self.post("/v1/transfers", &form, Some(idempotency_key)).await?;
        Self::field(&json, "id")
    }
}

/// What a Checkout Session is created for.
pub struct CheckoutRequest<'a> {
    pub user_id: &'a str,
    pub package_id: &'a str,
    pub package_name: &'a str,
    pub price_cents: i64,
    pub credits: i64,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
    pub idempotency_key: &'a str,
}

/// Why a webhook's signature is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    Missing,
    #[error("malformed Stripe-Signature header")]
    Malformed,
    #[error("signature timestamp outside the tolerance")]
    Stale,
    #[error("no signature matches")]
    NoMatch,
}

/// Hex HMAC-SHA256 of `{t}.{body}` with the endpoint secret: Stripe's `v1` scheme.
pub fn compute_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("hmac takes any key length");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// Verify a `Stripe-Signature` header (`t=…,v1=…[,v1=…][,v0=…]`) over the raw body: the
/// timestamp within `tolerance_secs` of `now_secs` (either way), and any one `v1` signature
/// matching, compared in constant time. Other schemes (`v0`) are ignored, as Stripe's
/// libraries do.
pub fn verify_signature(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match k {
            "t" => timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            "v1" => signatures.push(v),
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoMatch);
    }
    if (now_secs - t).abs() > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let mut matched = false;
    for s in signatures {
        if let Ok(bytes) = hex::decode(s) {
            // `verify_slice` compares in constant time.
            matched |= mac(secret, t, body).verify_slice(&bytes).is_ok();
        }
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed"}"#;

    #[test]
    fn signature_matches_the_stripe_library() {
        // Computed with stripe==16.1.0: stripe.WebhookSignature._compute_signature(
        //   "1700000000." + BODY, SECRET).
        assert_eq!(compute_signature(SECRET, 1_700_000_000, BODY), STRIPE_PY_SIGNATURE);
    }

    const STRIPE_PY_SIGNATURE: &str = "a13d4b1f9003bc2fb6c06224e878b6056185eaa50d40e1e7dc05517f8af41d7b";

    #[test]
    fn any_v1_signature_within_tolerance_verifies() {
        let t = 1_700_000_000;
        let good = compute_signature(SECRET, t, BODY);
        let header = format!("t={t},v1={},v1={good},v0=abc", "00".repeat(32));
        assert_eq!(verify_signature(Some(&header), BODY, SECRET, t + 300, 300), Ok(()));
        assert_eq!(verify_signature(Some(&header), BODY, SECRET, t - 300, 300), Ok(()));
        assert_eq!(verify_signature(Some(&header), BODY, SECRET, t + 301, 300), Err(SignatureError::Stale));
        assert_eq!(verify_signature(Some(&header), b"{}", SECRET, t, 300), Err(SignatureError::NoMatch));
        assert_eq!(verify_signature(Some(&header), BODY, "whsec_other", t, 300), Err(SignatureError::NoMatch));
        assert_eq!(verify_signature(None, BODY, SECRET, t, 300), Err(SignatureError::Missing));
        assert_eq!(verify_signature(Some("v1=zz"), BODY, SECRET, t, 300), Err(SignatureError::Malformed));
        assert_eq!(
            verify_signature(Some(&format!("t={t},v0={good}")), BODY, SECRET, t, 300),
            Err(SignatureError::NoMatch)
        );
    }
}
