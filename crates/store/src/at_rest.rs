//! The rows behind secrets at rest (SPEC §12): the master key check value, and the upgrade
//! of databases that stored the OIDC signing key and webhook secrets in clear. Sealing and
//! opening are the server's (`quota_server::secrets::at_rest`); this module only reads and
//! writes the columns. Not here: how values are encrypted.

use crate::on_pool;
use crate::store::{Store, StoreError};
use sqlx::Row;

/// Prefix of a sealed webhook secret (as the server writes it).
const SEALED_TEXT_PREFIX: &str = "enc1:";
/// Prefix of a sealed signing key.
const SEALED_BYTES_PREFIX: &[u8] = b"QSEAL1";

impl Store {
    /// The sealed master key check value, if the database has one.
    pub async fn master_key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        on_pool!(self.pool(), |p| {
            Ok(sqlx::query_scalar::<_, Vec<u8>>("SELECT sealed FROM master_key_check WHERE id = 1")
                .fetch_optional(p)
                .await?)
        })
    }

    /// Store the check value unless one exists; returns the one in force (another instance
    /// may have stored its own first).
    pub async fn init_master_key_check(&self, sealed: &[u8], now: i64) -> Result<Vec<u8>, StoreError> {
        on_pool!(self.pool(), |p| {
            sqlx::query(
                "INSERT INTO master_key_check (id, sealed, created_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
            )
            .bind(sealed)
            .bind(now)
            .execute(p)
            .await?;
            Ok(sqlx::query_scalar::<_, Vec<u8>>("SELECT sealed FROM master_key_check WHERE id = 1")
                .fetch_one(p)
                .await?)
        })
    }

    /// Webhook endpoints whose secret is still stored in clear: (id, secret).
    pub async fn clear_webhook_secrets(&self) -> Result<Vec<(String, String)>, StoreError> {
        on_pool!(self.pool(), |p| {
            let rows = sqlx::query("SELECT id, secret FROM webhook_endpoints WHERE secret NOT LIKE $1")
                .bind(format!("{SEALED_TEXT_PREFIX}%"))
                .fetch_all(p)
                .await?;
            Ok(rows.iter().map(|r| (r.get("id"), r.get("secret"))).collect())
        })
    }

    /// Replace a clear webhook secret with its sealed form (only if it is still `clear`).
    pub async fn seal_webhook_secret(&self, id: &str, clear: &str, sealed: &str) -> Result<(), StoreError> {
        on_pool!(self.pool(), |p| {
            sqlx::query("UPDATE webhook_endpoints SET secret = $1 WHERE id = $2 AND secret = $3")
                .bind(sealed)
                .bind(id)
                .bind(clear)
                .execute(p)
                .await?;
            Ok(())
        })
    }

    /// Signing keys still stored in clear: (kid, PKCS#1 DER).
    pub async fn clear_signing_keys(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        on_pool!(self.pool(), |p| {
            let rows = sqlx::query("SELECT kid, private_key_der FROM oauth_signing_keys").fetch_all(p).await?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<String, _>("kid"), r.get::<Vec<u8>, _>("private_key_der")))
                .filter(|(_, der)| !der.starts_with(SEALED_BYTES_PREFIX))
                .collect())
        })
    }

    /// Replace a clear signing key with its sealed form (only if it is still `clear`).
    pub async fn seal_signing_key(&self, kid: &str, clear: &[u8], sealed: &[u8]) -> Result<(), StoreError> {
        on_pool!(self.pool(), |p| {
            sqlx::query("UPDATE oauth_signing_keys SET private_key_der = $1 WHERE kid = $2 AND private_key_der = $3")
                .bind(sealed)
                .bind(kid)
                .bind(clear)
                .execute(p)
                .await?;
            Ok(())
        })
    }

    /// After an upgrade sealed secrets that were stored in clear: on SQLite, rewrite the file
    /// so the clear values do not linger in freed pages or the WAL. A no-op on PostgreSQL
    /// (whose old row versions go with VACUUM).
    pub async fn scrub_freed_pages(&self) -> Result<(), StoreError> {
        if let crate::Pool::Sqlite(p) = self.pool() {
            sqlx::query("VACUUM").execute(p).await?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(p).await?;
        }
        Ok(())
    }
}
