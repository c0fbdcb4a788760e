//! Secrets at rest (SPEC §12): the OIDC signing key and the webhook signing secrets must stay
//! readable to be used, so they are stored encrypted (AES-256-GCM) under a master key that is
//! not in the database: `secret_key` from the configuration, or on SQLite a key file beside
//! the database (`<database>.key`, created 0600 on first start). A database keeps a sealed
//! check value, so a missing or wrong master key stops `quota serve` with a clear error instead
//! of failing later (or, worse, generating new secrets). Not here: hashing of API keys and
//! tokens (`secrets`), which never need to be read back.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use std::path::{Path, PathBuf};

/// Prefix of a sealed text value (`enc1:` + base64 of nonce ‖ ciphertext ‖ tag).
pub const SEALED_TEXT_PREFIX: &str = "enc1:";
/// Prefix of a sealed binary value.
pub const SEALED_BYTES_PREFIX: &[u8] = b"QSEAL1";
/// What the check value seals.
const CHECK_PLAINTEXT: &[u8] = b"quota master key check v1";

/// What a sealed value is, bound into its ciphertext (a value moved to another column does
/// not open).
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    WebhookSecret,
    SigningKey,
    Check,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::WebhookSecret => b"quota:webhook-secret",
            Purpose::SigningKey => b"quota:oidc-signing-key",
            Purpose::Check => b"quota:master-key-check",
        }
    }
}

/// The 256-bit master key.
pub struct MasterKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    /// 32 bytes as 64 hex digits or as base64.
    pub fn parse(text: &str) -> Result<MasterKey, String> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .filter(|b| b.len() == 32)
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok().filter(|b| b.len() == 32))
            .ok_or("secret_key must be 32 bytes, written as 64 hex digits or base64 (try `openssl rand -hex 32`)")?;
        MasterKey::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<MasterKey, String> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| "secret_key: not a valid AES-256 key")?;
        Ok(MasterKey { key: LessSafeKey::new(key) })
    }

    /// A new random key, and its hex text.
    fn generate() -> Result<(MasterKey, String), String> {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        Ok((MasterKey::from_bytes(&bytes)?, hex::encode(bytes)))
    }

    pub fn seal(&self, purpose: Purpose, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let mut buf = plaintext.to_vec();
        // Sealing in place cannot fail for inputs under AES-GCM's 64 GiB bound.
        if self
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.aad()), &mut buf)
            .is_err()
        {
            buf.clear();
        }
        let mut out = Vec::with_capacity(SEALED_BYTES_PREFIX.len() + NONCE_LEN + buf.len());
        out.extend_from_slice(SEALED_BYTES_PREFIX);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out
    }

    pub fn open(&self, purpose: Purpose, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let rest = sealed.strip_prefix(SEALED_BYTES_PREFIX).ok_or("the value is not sealed")?;
        if rest.len() < NONCE_LEN {
            return Err("the sealed value is truncated".into());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(purpose.aad()), &mut buf)
            .map_err(|_| "the master key does not open this value (wrong secret_key?)")?;
        Ok(plain.to_vec())
    }

    /// A sealed text value, itself text (for TEXT columns).
    pub fn seal_text(&self, purpose: Purpose, plaintext: &str) -> String {
        let sealed = self.seal(purpose, plaintext.as_bytes());
        let body = &sealed[SEALED_BYTES_PREFIX.len()..];
        format!("{SEALED_TEXT_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(body))
    }

    pub fn open_text(&self, purpose: Purpose, sealed: &str) -> Result<String, String> {
        let body = sealed.strip_prefix(SEALED_TEXT_PREFIX).ok_or("the value is not sealed")?;
        let body = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| "bad sealed value")?;
        let mut bytes = SEALED_BYTES_PREFIX.to_vec();
        bytes.extend(body);
        String::from_utf8(self.open(purpose, &bytes)?).map_err(|_| "sealed text is not UTF-8".into())
    }

    /// The database's check value, sealed with this key.
    pub fn check_value(&self) -> Vec<u8> {
        self.seal(Purpose::Check, CHECK_PLAINTEXT)
    }

    /// Whether `sealed` is a check value this key made.
    pub fn opens_check(&self, sealed: &[u8]) -> bool {
        self.open(Purpose::Check, sealed).is_ok_and(|p| p == CHECK_PLAINTEXT)
    }
}

/// Where the master key comes from.
pub fn key_file_for(sqlite_file: &Path) -> PathBuf {
    let mut name = sqlite_file.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

/// The master key: `secret_key`, else (SQLite) the key file beside the database, created 0600
/// with a new random key when absent and `may_create` (a database that has no check value yet).
/// Returns the key and whether the file was just created.
fn load(secret_key: Option<&str>, sqlite_file: Option<&Path>, may_create: bool) -> Result<(MasterKey, bool), String> {
    if let Some(text) = secret_key.filter(|t| !t.trim().is_empty()) {
        return Ok((MasterKey::parse(text)?, false));
    }
    let Some(db) = sqlite_file else {
        return Err("set secret_key (or QUOTA_SECRET_KEY): the master key that encrypts the OIDC signing \
                    key and webhook secrets. It is required with PostgreSQL (the same on every instance) \
                    and with a SQLite database that has no file to keep a key file beside. Generate one \
                    with `openssl rand -hex 32`"
            .into());
    };
    let path = key_file_for(db);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            crate::files::restrict(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let key = MasterKey::parse(&text).map_err(|e| format!("master key file {}: {e}", path.display()))?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !may_create => Err(format!(
            "the master key file {} is missing, but this database's OIDC signing key and webhook secrets \
             were encrypted with it: restore the file (or set secret_key to the key it held). Without it \
             those secrets cannot be read; Quota will not start rather than replace them",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (key, text) = MasterKey::generate()?;
            crate::files::create_private(&path, format!("{text}\n").as_bytes())
                .map_err(|e| format!("creating the master key file {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "created the master key file (keep it with the database: the OIDC signing key and webhook secrets cannot be read without it)");
            Ok((key, true))
        }
        Err(e) => Err(format!("reading the master key file {}: {e}", path.display())),
    }
}

/// Unlock the database's secrets at start-up: load the master key, prove it is the one the
/// database was sealed with (or record that it is, on a database that had none), and seal
/// whatever an older version stored in clear (then scrub the file of the clear copies).
pub async fn unlock(
    secret_key: Option<&str>,
    store: &quota_store::Store,
    sqlite_file: Option<&Path>,
    now_ms: i64,
) -> Result<MasterKey, String> {
    let db = |e: quota_store::StoreError| format!("reading the master key check: {e}");
    let existing = store.master_key_check().await.map_err(db)?;
    let (key, created) = load(secret_key, sqlite_file, existing.is_none())?;
    let wrong = || {
        let source = match (secret_key, sqlite_file) {
            (Some(_), _) => "secret_key".to_string(),
            (None, Some(db)) => key_file_for(db).display().to_string(),
            (None, None) => "the master key".to_string(),
        };
        format!(
            "{source} is not the master key this database's OIDC signing key and webhook secrets were encrypted \
             with: use the key it was first started with (Quota will not start rather than lose them)"
        )
    };
    let check = match existing {
        Some(check) => check,
        None => store.init_master_key_check(&key.check_value(), now_ms).await.map_err(db)?,
    };
    if !key.opens_check(&check) {
        if created {
            // A key file this start made for nothing: another instance won the race.
            if let Some(db) = sqlite_file {
                let _ = std::fs::remove_file(key_file_for(db));
            }
        }
        return Err(wrong());
    }
    let sealed = seal_clear_secrets(&key, store).await.map_err(|e| format!("encrypting stored secrets: {e}"))?;
    if sealed > 0 {
        store.scrub_freed_pages().await.map_err(|e| format!("scrubbing the database file: {e}"))?;
        tracing::info!(secrets = sealed, "encrypted secrets an older version stored in clear");
    }
    Ok(key)
}

/// Seal the webhook secrets and signing keys still stored in clear; how many there were.
async fn seal_clear_secrets(key: &MasterKey, store: &quota_store::Store) -> Result<usize, quota_store::StoreError> {
    let mut n = 0;
    for (id, clear) in store.clear_webhook_secrets().await? {
        store.seal_webhook_secret(&id, &clear, &key.seal_text(Purpose::WebhookSecret, &clear)).await?;
        n += 1;
    }
    for (kid, der) in store.clear_signing_keys().await? {
        store.seal_signing_key(&kid, &der, &key.seal(Purpose::SigningKey, &der)).await?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let (key, _) = MasterKey::generate().unwrap();
        let (other, _) = MasterKey::generate().unwrap();
        let sealed = key.seal_text(Purpose::WebhookSecret, "whsec_abc");
        assert!(sealed.starts_with(SEALED_TEXT_PREFIX) && !sealed.contains("whsec_abc"));
        assert_eq!(key.open_text(Purpose::WebhookSecret, &sealed).unwrap(), "whsec_abc");
        assert!(other.open_text(Purpose::WebhookSecret, &sealed).is_err());
        assert!(key.open_text(Purpose::SigningKey, &sealed).is_err(), "bound to its purpose");
        assert!(key.opens_check(&key.check_value()));
        assert!(!other.opens_check(&key.check_value()));
        assert!(key.open(Purpose::Check, b"QSEAL1short").is_err());
    }

    #[test]
    fn keys_parse_from_hex_or_base64() {
        assert!(MasterKey::parse(&"ab".repeat(32)).is_ok());
        assert!(MasterKey::parse(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])).is_ok());
        assert!(MasterKey::parse("short").is_err());
    }
}
