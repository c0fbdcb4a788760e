//! The id_token signer (SPEC §5): one RS256 key, generated the first time it is needed (RSA
//! key generation takes a moment, so servers that never issue an id_token never pay for it),
//! stored in the database, and read back by every later start. `jsonwebtoken` signs, on aws-lc-rs
//! (constant-time RSA); aws-lc-rs also generates the key and gives its public modulus and
//! exponent for the JWKS document. The key is stored as PKCS#1 DER (RFC 8017 `RSAPrivateKey`).

use crate::error::{internal, ApiError};
use crate::secrets::at_rest::{MasterKey, Purpose, SEALED_BYTES_PREFIX};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use quota_store::Store;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::OnceCell;

/// Modulus size of the generated key.
const RSA_KEY_SIZE: KeySize = KeySize::Rsa2048;

/// The loaded signing key.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    /// The public key as a JWK (RFC 7517).
    pub jwk: Value,
}

impl SigningKey {
    fn from_der(kid: String, der: &[u8]) -> Result<SigningKey, String> {
        let private = RsaKeyPair::from_der(der).map_err(|e| format!("stored signing key: {e}"))?;
        let public = private.public_key();
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
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
    let key = RsaKeyPair::generate(RSA_KEY_SIZE).map_err(|e| format!("RSA key generation: {e}"))?;
    let pkcs8 = key.as_der().map_err(|e| format!("RSA key encoding: {e}"))?;
    let der = pkcs1_from_pkcs8(pkcs8.as_ref()).ok_or("RSA key encoding: unexpected PKCS#8 layout")?.to_vec();
    let kid = hex::encode(&Sha256::digest(key.public_key().modulus().big_endian_without_leading_zero())[..12]);
    Ok((kid, der))
}

/// The `RSAPrivateKey` (PKCS#1) inside a PKCS#8 `PrivateKeyInfo` (RFC 5208: SEQUENCE { INTEGER
/// version, SEQUENCE algorithm, OCTET STRING privateKey, … }). aws-lc-rs writes PKCS#8; the
/// stored format, and what `jsonwebtoken` reads, is PKCS#1.
fn pkcs1_from_pkcs8(der: &[u8]) -> Option<&[u8]> {
    /// One DER element at the start of `input`: (tag, contents, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const OCTET_STRING: u8 = 0x04;
    let (SEQUENCE, info, _) = element(der)? else { return None };
    let (INTEGER, _version, rest) = element(info)? else { return None };
    let (SEQUENCE, _algorithm, rest) = element(rest)? else { return None };
    let (OCTET_STRING, key, _) = element(rest)? else { return None };
    Some(key)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_loads_and_signs_a_verifiable_token() {
        let (kid, der) = generate().unwrap();
        let key = SigningKey::from_der(kid.clone(), &der).unwrap();
        let token = key.sign(&json!({"sub": "usr_1", "aud": "app", "exp": 4_000_000_000u64})).unwrap();
        let (n, e) = (key.jwk["n"].as_str().unwrap(), key.jwk["e"].as_str().unwrap());
        assert_eq!(e, "AQAB");
        assert_eq!(URL_SAFE_NO_PAD.decode(n).unwrap().len(), 256, "2048-bit modulus");
        let decoding = jsonwebtoken::DecodingKey::from_rsa_components(n, e).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_audience(&["app"]);
        let data = jsonwebtoken::decode::<Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.claims["sub"], "usr_1");
        assert_eq!(jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(), Some(kid.as_str()));
    }

    #[test]
    fn pkcs8_unwrapping_refuses_garbage() {
        assert!(pkcs1_from_pkcs8(&[]).is_none());
        assert!(pkcs1_from_pkcs8(&[0x30, 0x82, 0xff]).is_none());
        assert!(pkcs1_from_pkcs8(&[0x04, 0x00]).is_none());
    }
}
