//! The id_token signer (SPEC §5): one RS256 key, generated the first time it is needed (RSA
//! key generation takes a moment, so servers that never issue an id_token never pay for it),
//! stored in the database, and read back by every later start. `jsonwebtoken` signs; `rsa`
//! generates the key and exposes its public modulus and exponent for the JWKS document.

use crate::error::{internal, ApiError};
use crate::secrets::at_rest::{MasterKey, Purpose, SEALED_BYTES_PREFIX};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use quota_store::Store;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::OnceCell;

/// Modulus size of the generated key.
const RSA_BITS: usize = 2048;

/// The loaded signing key.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    /// The public key as a JWK (RFC 7517).
    pub jwk: Value,
}

impl SigningKey {
    fn from_der(kid: String, der: &[u8]) -> Result<SigningKey, String> {
        let private = RsaPrivateKey::from_pkcs1_der(der).map_err(|e| format!("stored signing key: {e}"))?;
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
        });
        Ok(SigningKey { kid, encoding: EncodingKey::from_rsa_der(der), jwk })
    }

    /// Sign `claims` as a compact JWS with this key's `kid`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, ApiError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(internal("sign id_token"))
    }
}

fn generate() -> Result<(String, Vec<u8>), String> {
    let key = RsaPrivateKey::new(&mut rand::thread_rng(), RSA_BITS).map_err(|e| e.to_string())?;
    let der = key.to_pkcs1_der().map_err(|e| e.to_string())?.as_bytes().to_vec();
    let kid = hex::encode(&Sha256::digest(key.n().to_bytes_be())[..12]);
    Ok((kid, der))
}

/// The signing key, loaded or generated once per process.
#[derive(Default)]
pub struct SigningKeys {
    key: OnceCell<Arc<SigningKey>>,
}

impl SigningKeys {
    /// The key, read (and opened with `master`) or generated (and stored sealed with it).
    pub async fn get(&self, store: &Store, master: &MasterKey, now_ms: i64) -> Result<Arc<SigningKey>, ApiError> {
        self.key
            .get_or_try_init(|| async {
                let (kid, stored) = match store.signing_key().await.map_err(internal("read signing key"))? {
                    Some(k) => k,
                    None => {
                        let (kid, der) = tokio::task::spawn_blocking(generate)
                            .await
                            .map_err(internal("keygen task"))?
                            .map_err(internal("generate signing key"))?;
                        tracing::info!(kid = %kid, "generated the id_token signing key");
                        let sealed = master.seal(Purpose::SigningKey, &der);
                        store.store_signing_key(&kid, &sealed, now_ms).await.map_err(internal("store signing key"))?
                    }
                };
                // Sealed since issue 14; a clear key (written by an older instance during a
                // rolling upgrade) is read as it is and sealed at the next start.
                let der = if stored.starts_with(SEALED_BYTES_PREFIX) {
                    master.open(Purpose::SigningKey, &stored).map_err(internal("open signing key"))?
                } else {
                    stored
                };
                SigningKey::from_der(kid, &der).map(Arc::new).map_err(internal("load signing key"))
            })
            .await
            .cloned()
    }
}
