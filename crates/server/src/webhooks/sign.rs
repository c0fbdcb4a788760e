//! Webhook signing (SPEC §8): new `whsec_…` secrets and the two signatures every delivery
//! carries (`X-Quota-Signature`, and Standard Webhooks' `webhook-signature`). Pure code, no
//! I/O. Not here: sealing secrets at rest (`crate::secrets::at_rest`), the send (`attempt`).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A new `whsec_…` secret: 32 random bytes, base64 (the Standard Webhooks format).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The two signatures of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// `X-Quota-Signature`: hex HMAC-SHA256 of the raw body, keyed with the whole secret string.
    pub quota: String,
    /// `webhook-signature`: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, keyed with the
    /// base64-decoded part of the secret after `whsec_` (Standard Webhooks).
    pub standard: String,
}

/// Sign `body` for delivery `msg_id` at Unix second `timestamp`.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Signatures {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let quota = hex::encode(mac.finalize().into_bytes());
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .unwrap_or_else(|_| secret.as_bytes().to_vec());
    let mut mac = <Hmac<Sha256>>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body);
    let standard = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    Signatures { quota, standard }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_signature_matches_the_spec_example() {
        // From the Standard Webhooks specification's test vectors.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig.standard, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
