//! The storage interface: a pool over SQLite (embedded default) or PostgreSQL (several
//! instances), migrations, and the queries for users, sessions, keys, balances and idempotency
//! records. The ledger engines (`ledger/`) own the write path for money;
//! nothing here moves credits except `commit_direct`, which the admin CLI uses when no engine
//! runs in its process. Each query is written once and runs on either backend (`db.rs`).

use crate::db::{DbRow, Pool};
use crate::idempotency::{IdempotencyCompletion, IdempotencyStart, IDEMPOTENCY_TTL_MS};
use crate::models::{ApiKey, NewApiKey, Session, User};
use crate::now_ms;
use crate::{on_pool, on_tx};
use quota_core::{AccountId, BillingMode, Transfer};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::collections::BTreeMap;
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
    /// `sqlite://path/to/file.db` (created if missing), `sqlite::memory:`, or
    /// `postgres://user@host/database` (several instances may share it).
    pub database_url: String,
    /// SQLite only; PostgreSQL commits as its server is configured (`synchronous_commit`).
    pub synchronous: Synchronous,
    /// Connections in the pool (the ledger writer has its own).
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
    #[error("unsupported database url `{0}`: use sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// From the SQLite ledger writer's own connection.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The database behind Quota. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// The SQLite file and sync setting, for the ledger writer's own connection.
    sqlite_file: Option<(std::path::PathBuf, Synchronous, bool)>,
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// PostgreSQL's NOTIFY channel on which cached-state changes (a key revoked, rotated or changed,
/// a user token revoked, a webhook endpoint changed) reach every instance's caches.
pub const CHANGES_CHANNEL: &str = "quota_changes";

impl Store {
    /// Open (creating the file if needed) without migrating.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let url = config.database_url.as_str();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?.application_name("quota");
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            return Ok(Store { pool: Pool::Postgres(pool), sqlite_file: None });
        }
        if !url.starts_with("sqlite:") {
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
            .foreign_keys(true)
            // No connection checkpoints as a side effect of its commit (SQLite's default, past
            // 1,000 WAL pages: a copy and an fsync inside whichever write came last, every
            // write once the WAL is that long). A running ledger checkpoints once a second
            // (`ledger::checkpoint`); a process without one checkpoints when it closes.
            .pragma("wal_autocheckpoint", "0");
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .min_connections(1)
            .after_connect(|conn, _| Box::pin(crate::sqlite_busy::install(conn)))
            .connect_with(options.clone())
            .await?;
        // sqlx names an in-memory database `file:sqlx-in-memory-N` and opens it with a shared
        // cache, so that every connection of the process (the ledger writer's too) sees it.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let sqlite_file = Some((options.get_filename().to_path_buf(), config.synchronous, in_memory));
        Ok(Store { pool: Pool::Sqlite(pool), sqlite_file })
    }

    /// Apply pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(p) => SQLITE_MIGRATOR.run(p).await?,
            Pool::Postgres(p) => POSTGRES_MIGRATOR.run(p).await?,
        }
        Ok(())
    }

    /// Open and migrate: what `quota serve` does.
    pub async fn open_and_migrate(config: &StoreConfig) -> Result<Store, StoreError> {
        let store = Store::open(config).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.pool.backend()
    }

    /// Where the SQLite ledger writer opens its own connection (outside the pool), and how it
    /// syncs; `None` on PostgreSQL.
    pub(crate) fn sqlite_file(&self) -> Option<crate::ledger::SqliteFile> {
        let (path, synchronous, in_memory) = self.sqlite_file.clone()?;
        Some(crate::ledger::SqliteFile { path, synchronous, in_memory })
    }

    /// Changes announced by any instance (PostgreSQL), for the caches; `None` on SQLite, where
    /// the one instance evicts its own caches. Listening has started when this returns.
    pub async fn changes(&self) -> Result<Option<Changes>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else { return Ok(None) };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(Some(Changes { listener }))
    }

    /// Tell every instance that `what` changed (PostgreSQL `NOTIFY`, delivered to listeners
    /// once the statement's transaction commits; a no-op on SQLite).
    pub async fn announce(&self, what: &str) -> Result<(), StoreError> {
        if let Pool::Postgres(p) = &self.pool {
            sqlx::query("SELECT pg_notify($1, $2)").bind(CHANGES_CHANNEL).bind(what).execute(p).await?;
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(&self.pool, |p| sqlx::query("SELECT 1").execute(p).await?.rows_affected());
        Ok(())
    }

    // ---- users -------------------------------------------------------------------------

    pub async fn create_user(&self, id: &str, email: &str, password_hash: &str) -> Result<User, StoreError> {
        let now = now_ms();
        let res = on_pool!(&self.pool, |p| sqlx::query(
            "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)"
        )
        .bind(id)
        .bind(email)
        .bind(password_hash)
        .bind(now)
        .execute(p)
        .await
        .map(|_| ()));
        match res {
            Ok(()) => {
                Ok(User { id: id.into(), email: email.into(), password_hash: password_hash.into(), created_at: now })
            }
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query(
            "SELECT id, email, password_hash, created_at FROM users WHERE email = $1"
        )
        .bind(email)
        .fetch_optional(p)
        .await?
        .map(|r| user_from_row(&r))))
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query(
            "SELECT id, email, password_hash, created_at FROM users WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(p)
        .await?
        .map(|r| user_from_row(&r))))
    }

    /// Every account with its wallet balance, oldest first (admin listing).
    pub async fn list_users_with_balances(&self) -> Result<Vec<(User, i64)>, StoreError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query(
            "SELECT u.id, u.email, u.password_hash, u.created_at, COALESCE(a.balance, 0) AS balance \
             FROM users u LEFT JOIN accounts a ON a.id = 'wallet:' || u.id ORDER BY u.created_at, u.id",
        )
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| (user_from_row(r), r.get::<i64>("balance")))
        .collect()))
    }

    // ---- sessions ----------------------------------------------------------------------

    pub async fn create_session(&self, token_hash: &str, user_id: &str, expires_at: i64) -> Result<(), StoreError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)"
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(now_ms())
        .bind(expires_at)
        .execute(p)
        .await?
        .rows_affected());
        Ok(())
    }

    /// A live session: not revoked, not expired.
    pub async fn session(&self, token_hash: &str) -> Result<Option<Session>, StoreError> {
        let row: Option<(String, i64)> = on_pool!(&self.pool, |p| {
            sqlx::query_as(
            "SELECT user_id, expires_at FROM sessions WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(p)
        .await?
        });
        Ok(row.map(|(user_id, expires_at)| Session { user_id, expires_at }))
    }

    pub async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL"
        )
        .bind(now_ms())
        .bind(token_hash)
        .execute(p)
        .await?
        .rows_affected());
        Ok(())
    }

    // ---- API keys ----------------------------------------------------------------------

    pub async fn create_key(&self, key: &NewApiKey) -> Result<ApiKey, StoreError> {
        let now = now_ms();
        on_pool!(&self.pool, |p| sqlx::query(INSERT_KEY)
            .bind(&key.id)
            .bind(&key.user_id)
            .bind(&key.name)
            .bind(&key.prefix)
            .bind(&key.key_hash)
            .bind(key.billing_mode.as_str())
            .bind(key.rate_limit_per_minute)
            .bind(&key.app_id)
            .bind(now)
            .bind(true)
            .execute(p)
            .await?
            .rows_affected());
        Ok(ApiKey {
            id: key.id.clone(),
            user_id: key.user_id.clone(),
            name: key.name.clone(),
            prefix: key.prefix.clone(),
            billing_mode: key.billing_mode,
            rate_limit_per_minute: key.rate_limit_per_minute,
            app_id: key.app_id.clone(),
            quota_usage_event: true,
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        })
    }

    pub async fn list_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id");
        on_pool!(&self.pool, |p| sqlx::query(&sql).bind(user_id).fetch_all(p).await?.iter().map(key_from_row).collect())
    }

    pub async fn key(&self, user_id: &str, key_id: &str) -> Result<Option<ApiKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 AND id = $2");
        on_pool!(&self.pool, |p| sqlx::query(&sql)
            .bind(user_id)
            .bind(key_id)
            .fetch_optional(p)
            .await?
            .as_ref()
            .map(key_from_row)
            .transpose())
    }

    /// A live (unrevoked) key by the hash of its secret.
    pub async fn live_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL");
        on_pool!(&self.pool, |p| sqlx::query(&sql)
            .bind(key_hash)
            .fetch_optional(p)
            .await?
            .as_ref()
            .map(key_from_row)
            .transpose())
    }

    /// Change a key's name and/or rate-limit override. `rate_limit` of `Some(None)` clears it.
    pub async fn update_key(
        &self,
        user_id: &str,
        key_id: &str,
        name: Option<&str>,
        rate_limit: Option<Option<i64>>,
        quota_usage_event: Option<bool>,
    ) -> Result<ApiKey, StoreError> {
        let sql = format!(
            "UPDATE api_keys SET name = COALESCE($1, name), \
             rate_limit_per_minute = CASE WHEN $2 THEN $3 ELSE rate_limit_per_minute END, \
             quota_usage_event = COALESCE($6, quota_usage_event) \
             WHERE user_id = $4 AND id = $5 RETURNING {KEY_COLUMNS}"
        );
        let key = on_pool!(&self.pool, |p| sqlx::query(&sql)
            .bind(name)
            .bind(rate_limit.is_some())
            .bind(rate_limit.flatten())
            .bind(user_id)
            .bind(key_id)
            .bind(quota_usage_event)
            .fetch_optional(p)
            .await?
            .as_ref()
            .map(key_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)?);
        Ok(key)
    }

    /// Revoke a key; returns its hash so caches can drop it.
    /// Revoking twice is not an error.
    pub async fn revoke_key(&self, user_id: &str, key_id: &str) -> Result<String, StoreError> {
        let hash: String = on_pool!(&self.pool, |p| {
            sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE user_id = $2 AND id = $3 RETURNING key_hash",
        )
        .bind(now_ms())
        .bind(user_id)
        .bind(key_id)
        .fetch_optional(p)
        .await?
        .ok_or(StoreError::NotFound)?
        });
        Ok(hash)
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
        let mut tx = self.pool.begin_write().await?;
        let sql = format!(
            "UPDATE api_keys SET revoked_at = $1 WHERE user_id = $2 AND id = $3 AND revoked_at IS NULL \
             RETURNING {KEY_COLUMNS}, key_hash"
        );
        let now = now_ms();
        let (old_key, old_hash) = on_tx!(&mut tx, |c| {
            let old = sqlx::query(&sql)
                .bind(now)
                .bind(user_id)
                .bind(old_id)
                .fetch_optional(&mut *c)
                .await?
                .ok_or(StoreError::NotFound)?;
            let old_key = key_from_row(&old)?;
            let old_hash: String = old.get("key_hash");
            sqlx::query(INSERT_KEY)
                .bind(new_id)
                .bind(user_id)
                .bind(&old_key.name)
                .bind(new_prefix)
                .bind(new_hash)
                .bind(old_key.billing_mode.as_str())
                .bind(old_key.rate_limit_per_minute)
                .bind(&old_key.app_id)
                .bind(now)
                .bind(old_key.quota_usage_event)
                .execute(&mut *c)
                .await?;
            (old_key, old_hash)
        });
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
        let b: Option<i64> = on_pool!(&self.pool, |p| sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
            .bind(account.to_string())
            .fetch_optional(p)
            .await?);
        Ok(b.unwrap_or(0))
    }

    /// Write transfers in one transaction without a ledger engine (the admin CLI). Only for
    /// credits into wallets: it does not check that a debited wallet can pay. Idempotent by id;
    /// returns how many were new. Balances are updated in account order, the order every
    /// writer locks them in (no deadlock with a PostgreSQL engine's batches).
    pub async fn commit_direct(&self, transfers: &[Transfer], origin: &str) -> Result<usize, StoreError> {
        for t in transfers {
            t.validate().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        }
        let now = now_ms();
        let mut tx = self.pool.begin_write().await?;
        let new = on_tx!(&mut tx, |c| {
            let mut new = 0;
            let mut deltas: BTreeMap<String, i64> = BTreeMap::new();
            for t in transfers {
                let inserted = sqlx::query(INSERT_TRANSFER)
                    .bind(&t.id)
                    .bind(t.from.to_string())
                    .bind(t.to.to_string())
                    .bind(t.amount.get())
                    .bind(t.kind.as_str())
                    .bind(&t.cause)
                    .bind(t.created_at_ms)
                    .bind(origin)
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                if inserted == 1 {
                    new += 1;
                    *deltas.entry(t.from.to_string()).or_default() -= t.amount.get();
                    *deltas.entry(t.to.to_string()).or_default() += t.amount.get();
                }
            }
            for (account, delta) in deltas.iter().filter(|(_, d)| **d != 0) {
                sqlx::query(ADD_BALANCE).bind(account).bind(delta).bind(now).execute(&mut *c).await?;
            }
            new
        });
        tx.commit().await?;
        Ok(new)
    }

    /// Whether a transfer with this id was committed.
    pub async fn transfer_exists(&self, id: &str) -> Result<bool, StoreError> {
        let row: Option<String> =
            on_pool!(&self.pool, |p| sqlx::query_scalar("SELECT id FROM transfers WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await?);
        Ok(row.is_some())
    }

    // ---- idempotency -------------------------------------------------------------------

    /// Claim `(scope, key)` for a request whose body hashes to `request_hash`. A claim left
    /// unfinished for longer than `stale_after_ms` (its process died before charging) may be
    /// taken over: nothing was charged under it, since the charge and the completion commit
    /// together. Claims of one key run one at a time (on every instance), so of two racing for
    /// a key exactly one claims it; claims of different keys do not wait for each other.
    pub async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        stale_after_ms: i64,
    ) -> Result<IdempotencyStart, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin_write_for(&format!("idempotency\n{scope}\n{key}")).await?;
        let outcome = on_tx!(&mut tx, |c| {
            let row = sqlx::query(
                "SELECT request_hash, status, content_type, response_body, created_at FROM idempotency_keys \
                 WHERE scope = $1 AND key = $2",
            )
            .bind(scope)
            .bind(key)
            .fetch_optional(&mut *c)
            .await?;
            match row {
                Some(r) if r.get::<i64>("created_at") + IDEMPOTENCY_TTL_MS > now => {
                    let stored_hash: String = r.get("request_hash");
                    let status: Option<i64> = r.get("status");
                    if stored_hash != request_hash {
                        IdempotencyStart::Conflict
                    } else if let Some(status) = status {
                        IdempotencyStart::Replay {
                            status: u16::try_from(status)
                                .map_err(|_| StoreError::Corrupt("idempotency status".into()))?,
                            content_type: r
                                .get::<Option<String>>("content_type")
                                .unwrap_or_else(|| "application/json".into()),
                            body: r.get::<Option<Vec<u8>>>("response_body").unwrap_or_default(),
                        }
                    } else if r.get::<i64>("created_at") + stale_after_ms > now {
                        IdempotencyStart::InProgress
                    } else {
                        sqlx::query("UPDATE idempotency_keys SET created_at = $1 WHERE scope = $2 AND key = $3")
                            .bind(now)
                            .bind(scope)
                            .bind(key)
                            .execute(&mut *c)
                            .await?;
                        IdempotencyStart::Retaken
                    }
                }
                _ => {
                    sqlx::query(
                        "INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash, \
                         created_at = excluded.created_at, status = NULL, content_type = NULL, response_body = NULL",
                    )
                    .bind(scope)
                    .bind(key)
                    .bind(request_hash)
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
                    IdempotencyStart::New
                }
            }
        });
        tx.commit().await?;
        Ok(outcome)
    }

    /// Forget an unfinished claim (the request failed without charging), so a retry may run.
    pub async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND status IS NULL"
        )
        .bind(scope)
        .bind(key)
        .execute(p)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Store a finished response that moved no money (e.g. an error answer).
    pub async fn idempotency_complete(&self, c: &IdempotencyCompletion) -> Result<(), StoreError> {
        on_pool!(&self.pool, |p| complete_idempotency(c).execute(p).await?.rows_affected());
        Ok(())
    }
}

/// What [`Changes::next`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This thing changed (`key:<id>`, `token:<grant id>`, `webhooks:<developer id>`…).
    Changed(String),
    /// The connection was lost (and is being re-established): changes may have been missed, so
    /// everything cached must be read again.
    Lost,
}

/// The stream of changes announced by every instance (PostgreSQL `LISTEN`).
pub struct Changes {
    listener: PgListener,
}

impl Changes {
    /// The next change; waits for one. After `Lost`, the next call reconnects (waiting a little
    /// first if the database refuses).
    pub async fn next(&mut self) -> Change {
        match self.listener.try_recv().await {
            Ok(Some(n)) => Change::Changed(n.payload().to_string()),
            Ok(None) => Change::Lost,
            Err(e) => {
                tracing::warn!(error = %e, "change listener lost its connection; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                Change::Lost
            }
        }
    }
}

/// Insert one transfer unless its id exists (`rows_affected` says whether it was new).
pub(crate) const INSERT_TRANSFER: &str =
    "INSERT INTO transfers (id, from_account, to_account, amount, kind, cause, created_at, origin) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING";

/// Add `$2` to account `$1`'s cached balance, creating the row.
pub(crate) const ADD_BALANCE: &str = "INSERT INTO accounts (id, balance, updated_at) VALUES ($1, $2, $3) \
     ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + excluded.balance, updated_at = excluded.updated_at";

/// The statement that stores the finished response of an idempotent request, on either backend.
pub(crate) fn complete_idempotency<'q, Db>(
    c: &'q IdempotencyCompletion,
) -> sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments<'q>>
where
    Db: sqlx::Database,
    i64: sqlx::Encode<'q, Db> + sqlx::Type<Db>,
    &'q str: sqlx::Encode<'q, Db> + sqlx::Type<Db>,
    &'q [u8]: sqlx::Encode<'q, Db> + sqlx::Type<Db>,
{
    sqlx::query(
        "UPDATE idempotency_keys SET status = $1, content_type = $2, response_body = $3 WHERE scope = $4 AND key = $5",
    )
    .bind(i64::from(c.status))
    .bind(c.content_type.as_str())
    .bind(c.body.as_slice())
    .bind(c.scope.as_str())
    .bind(c.key.as_str())
}

const INSERT_KEY: &str = "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, billing_mode, \
     rate_limit_per_minute, app_id, created_at, quota_usage_event) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

const KEY_COLUMNS: &str =
    "id, user_id, name, prefix, billing_mode, rate_limit_per_minute, app_id, created_at, last_used_at, revoked_at, \
     quota_usage_event";

fn user_from_row(r: &impl DbRow) -> User {
    User {
        id: r.get("id"),
        email: r.get("email"),
        password_hash: r.get("password_hash"),
        created_at: r.get("created_at"),
    }
}

fn key_from_row(r: &impl DbRow) -> Result<ApiKey, StoreError> {
    let mode: String = r.get("billing_mode");
    Ok(ApiKey {
        id: r.get("id"),
        user_id: r.get("user_id"),
        name: r.get("name"),
        prefix: r.get("prefix"),
        billing_mode: BillingMode::from_str(&mode).map_err(StoreError::Corrupt)?,
        rate_limit_per_minute: r.get("rate_limit_per_minute"),
        app_id: r.get("app_id"),
        quota_usage_event: r.get("quota_usage_event"),
        created_at: r.get("created_at"),
        last_used_at: r.get("last_used_at"),
        revoked_at: r.get("revoked_at"),
    })
}
