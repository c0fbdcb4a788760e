//! The storage interface: a pool over the embedded SQLite database, migrations, and the queries
//! for users, sessions, keys, balances and idempotency records. The ledger engine (`ledger.rs`)
//! owns the write path for money; nothing here moves credits except `commit_direct`, which the
//! admin CLI uses when no engine runs in its process.

use crate::idempotency::{IdempotencyStart, IDEMPOTENCY_TTL_MS};
use crate::models::{ApiKey, NewApiKey, Session, User};
use crate::now_ms;
use quota_core::{AccountId, BillingMode, Transfer};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// How hard SQLite syncs a commit (SPEC §4.3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// WAL + NORMAL: a commit survives a process crash (`kill -9`); power loss may lose the last
    /// few commits.
    Normal,
    /// WAL + FULL: every commit is fsynced; group commit keeps it affordable.
    Full,
}

impl FromStr for Synchronous {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Ok(Synchronous::Normal),
            "full" => Ok(Synchronous::Full),
            other => Err(format!("sqlite_synchronous must be `normal` or `full`, got `{other}`")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db` (created if missing) or `sqlite::memory:`.
    pub database_url: String,
    pub synchronous: Synchronous,
    /// Read connections in the pool (the ledger writer has its own).
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { database_url: "sqlite://quota.db".into(), synchronous: Synchronous::Normal, max_connections: 8 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    #[error("unsupported database url `{0}`: use sqlite://… (PostgreSQL support is tracked separately)")]
    UnsupportedUrl(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The database behind Quota. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    options: SqliteConnectOptions,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Store {
    /// Open (creating the file if needed) without migrating.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        if !config.database_url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl(config.database_url.clone()));
        }
        let options = SqliteConnectOptions::from_str(&config.database_url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match config.synchronous {
                Synchronous::Normal => SqliteSynchronous::Normal,
                Synchronous::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        Ok(Store { pool, options })
    }

    /// Apply pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Open and migrate: what `quota serve` does.
    pub async fn open_and_migrate(config: &StoreConfig) -> Result<Store, StoreError> {
        let store = Store::open(config).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A dedicated connection outside the pool (the ledger writer's).
    pub(crate) async fn dedicated_connection(&self) -> Result<sqlx::SqliteConnection, StoreError> {
        use sqlx::ConnectOptions;
        Ok(self.options.connect().await?)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- users -------------------------------------------------------------------------

    pub async fn create_user(&self, id: &str, email: &str, password_hash: &str) -> Result<User, StoreError> {
        let now = now_ms();
        let res = sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(email)
            .bind(password_hash)
            .bind(now)
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => {
                Ok(User { id: id.into(), email: email.into(), password_hash: password_hash.into(), created_at: now })
            }
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT id, email, password_hash, created_at FROM users WHERE email = ?")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| user_from_row(&r)))
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT id, email, password_hash, created_at FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| user_from_row(&r)))
    }

    /// Every account with its wallet balance, oldest first (admin listing).
    pub async fn list_users_with_balances(&self) -> Result<Vec<(User, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.id, u.email, u.password_hash, u.created_at, COALESCE(a.balance, 0) AS balance \
             FROM users u LEFT JOIN accounts a ON a.id = 'wallet:' || u.id ORDER BY u.created_at, u.id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (user_from_row(r), r.get::<i64, _>("balance"))).collect())
    }

    // ---- sessions ----------------------------------------------------------------------

    pub async fn create_session(&self, token_hash: &str, user_id: &str, expires_at: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)")
            .bind(token_hash)
            .bind(user_id)
            .bind(now_ms())
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A live session: not revoked, not expired.
    pub async fn session(&self, token_hash: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(
            "SELECT user_id, expires_at FROM sessions WHERE token_hash = ? AND revoked_at IS NULL AND expires_at > ?",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Session { user_id: r.get("user_id"), expires_at: r.get("expires_at") }))
    }

    pub async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- API keys ----------------------------------------------------------------------

    pub async fn create_key(&self, key: &NewApiKey) -> Result<ApiKey, StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, billing_mode, rate_limit_per_minute, app_id, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.user_id)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(&key.key_hash)
        .bind(key.billing_mode.as_str())
        .bind(key.rate_limit_per_minute)
        .bind(&key.app_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(ApiKey {
            id: key.id.clone(),
            user_id: key.user_id.clone(),
            name: key.name.clone(),
            prefix: key.prefix.clone(),
            billing_mode: key.billing_mode,
            rate_limit_per_minute: key.rate_limit_per_minute,
            app_id: key.app_id.clone(),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        })
    }

    pub async fn list_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = ? ORDER BY created_at DESC, id"))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(key_from_row).collect()
    }

    pub async fn key(&self, user_id: &str, key_id: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = ? AND id = ?"))
            .bind(user_id)
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// A live (unrevoked) key by the hash of its secret.
    pub async fn live_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL"))
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Change a key's name and/or rate-limit override. `rate_limit` of `Some(None)` clears it.
    pub async fn update_key(
        &self,
        user_id: &str,
        key_id: &str,
        name: Option<&str>,
        rate_limit: Option<Option<i64>>,
    ) -> Result<ApiKey, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(name) = name {
            sqlx::query("UPDATE api_keys SET name = ? WHERE user_id = ? AND id = ?")
                .bind(name)
                .bind(user_id)
                .bind(key_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(limit) = rate_limit {
            sqlx::query("UPDATE api_keys SET rate_limit_per_minute = ? WHERE user_id = ? AND id = ?")
                .bind(limit)
                .bind(user_id)
                .bind(key_id)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = ? AND id = ?"))
            .bind(user_id)
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        key_from_row(&row)
    }

    /// Revoke a key; returns its hash so caches can drop it. Revoking twice is not an error.
    pub async fn revoke_key(&self, user_id: &str, key_id: &str) -> Result<String, StoreError> {
        let row = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE user_id = ? AND id = ? RETURNING key_hash",
        )
        .bind(now_ms())
        .bind(user_id)
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(row.get("key_hash"))
    }

    /// Rotate: in one transaction, revoke `old_id` and create `new` with its settings.
    /// Returns (new key, old key's hash). A revoked key cannot be rotated.
    pub async fn rotate_key(
        &self,
        user_id: &str,
        old_id: &str,
        new_id: &str,
        new_prefix: &str,
        new_hash: &str,
    ) -> Result<(ApiKey, String), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let old = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS}, key_hash FROM api_keys WHERE user_id = ? AND id = ? AND revoked_at IS NULL"
        ))
        .bind(user_id)
        .bind(old_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let old_key = key_from_row(&old)?;
        let old_hash: String = old.get("key_hash");
        let now = now_ms();
        sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ?").bind(now).bind(old_id).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, billing_mode, rate_limit_per_minute, app_id, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(new_id)
        .bind(user_id)
        .bind(&old_key.name)
        .bind(new_prefix)
        .bind(new_hash)
        .bind(old_key.billing_mode.as_str())
        .bind(old_key.rate_limit_per_minute)
        .bind(&old_key.app_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let new_key = ApiKey {
            id: new_id.into(),
            prefix: new_prefix.into(),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
            ..old_key
        };
        Ok((new_key, old_hash))
    }

    // ---- balances ----------------------------------------------------------------------

    /// The stored balance of an account (0 if it has never moved).
    pub async fn balance(&self, account: &AccountId) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT balance FROM accounts WHERE id = ?")
            .bind(account.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>("balance")).unwrap_or(0))
    }

    /// Write transfers in one transaction without a ledger engine (the admin CLI). Only for
    /// credits into wallets: it does not check that a debited wallet can pay. Idempotent by id;
    /// returns how many were new.
    pub async fn commit_direct(&self, transfers: &[Transfer], origin: &str) -> Result<usize, StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let result = async {
            let mut new = 0;
            for t in transfers {
                if crate::ledger::insert_transfer(&mut conn, t, origin).await? {
                    new += 1;
                    crate::ledger::add_balance(&mut conn, &t.from, -t.amount.0).await?;
                    crate::ledger::add_balance(&mut conn, &t.to, t.amount.0).await?;
                }
            }
            Ok::<_, StoreError>(new)
        }
        .await;
        match result {
            Ok(n) => {
                sqlx::query("COMMIT").execute(&mut *conn).await?;
                Ok(n)
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                Err(e)
            }
        }
    }

    /// Whether a transfer with this id was committed.
    pub async fn transfer_exists(&self, id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM transfers WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        Ok(row.is_some())
    }

    // ---- idempotency -------------------------------------------------------------------

    /// Claim `(scope, key)` for a request whose body hashes to `request_hash`. A claim left
    /// unfinished for longer than `stale_after_ms` (its process died before charging) may be
    /// taken over: nothing was charged under it, since the charge and the completion commit
    /// together.
    pub async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        stale_after_ms: i64,
    ) -> Result<IdempotencyStart, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "SELECT request_hash, status, content_type, response_body, created_at FROM idempotency_keys WHERE scope = ? AND key = ?",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match row {
            Some(r) if r.get::<i64, _>("created_at") + IDEMPOTENCY_TTL_MS > now => {
                let stored_hash: String = r.get("request_hash");
                let status: Option<i64> = r.get("status");
                if stored_hash != request_hash {
                    IdempotencyStart::Conflict
                } else if let Some(status) = status {
                    IdempotencyStart::Replay {
                        status: u16::try_from(status).map_err(|_| StoreError::Corrupt("idempotency status".into()))?,
                        content_type: r
                            .get::<Option<String>, _>("content_type")
                            .unwrap_or_else(|| "application/json".into()),
                        body: r.get::<Option<Vec<u8>>, _>("response_body").unwrap_or_default(),
                    }
                } else if r.get::<i64, _>("created_at") + stale_after_ms > now {
                    IdempotencyStart::InProgress
                } else {
                    sqlx::query("UPDATE idempotency_keys SET created_at = ? WHERE scope = ? AND key = ?")
                        .bind(now)
                        .bind(scope)
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                    IdempotencyStart::Retaken
                }
            }
            _ => {
                sqlx::query(
                    "INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash, created_at = excluded.created_at, \
                     status = NULL, content_type = NULL, response_body = NULL",
                )
                .bind(scope)
                .bind(key)
                .bind(request_hash)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                IdempotencyStart::New
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Forget an unfinished claim (the request failed without charging), so a retry may run.
    pub async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND status IS NULL")
            .bind(scope)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Store a finished response that moved no money (e.g. an error answer).
    pub async fn idempotency_complete(&self, c: &crate::idempotency::IdempotencyCompletion) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        crate::ledger::complete_idempotency(&mut conn, c).await
    }
}

const KEY_COLUMNS: &str =
    "id, user_id, name, prefix, billing_mode, rate_limit_per_minute, app_id, created_at, last_used_at, revoked_at";

fn user_from_row(r: &sqlx::sqlite::SqliteRow) -> User {
    User {
        id: r.get("id"),
        email: r.get("email"),
        password_hash: r.get("password_hash"),
        created_at: r.get("created_at"),
    }
}

fn key_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ApiKey, StoreError> {
    let mode: String = r.get("billing_mode");
    Ok(ApiKey {
        id: r.get("id"),
        user_id: r.get("user_id"),
        name: r.get("name"),
        prefix: r.get("prefix"),
        billing_mode: BillingMode::from_str(&mode).map_err(StoreError::Corrupt)?,
        rate_limit_per_minute: r.get("rate_limit_per_minute"),
        app_id: r.get("app_id"),
        created_at: r.get("created_at"),
        last_used_at: r.get("last_used_at"),
        revoked_at: r.get("revoked_at"),
    })
}
