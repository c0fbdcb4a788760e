//! The two backends behind one set of queries: [`Pool`] and [`Tx`] are enums over SQLite's and
//! PostgreSQL's native types, and [`on_pool!`](crate::on_pool) / [`on_tx!`](crate::on_tx) run a
//! body once per backend (compiled twice), so each query is written once with `$N` placeholders
//! (SQLite accepts them too) and each backend keeps its native driver. [`DbRow`] reads a column
//! the same way from either backend's row, so row-to-struct functions are written once.
//!
//! Where the dialects differ the query says so in one place: sums are `CAST(… AS BIGINT)`
//! (PostgreSQL's `SUM(bigint)` is `numeric`), booleans are bound as `bool`.

use sqlx::postgres::{PgPool, PgRow};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{Postgres, Sqlite};

/// The pool of whichever database Quota runs on.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A transaction on either backend (see [`Pool::begin_write`]).
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// Run `$body` with `$p` bound to the native pool, whichever backend it is: the body is
/// compiled once per backend, so one query text (with `$N` placeholders) serves both.
///
/// ```ignore
/// let n: i64 = on_pool!(store.pool(), |p| sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(p).await?);
/// ```
#[macro_export]
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            $crate::Pool::Sqlite($p) => $body,
            $crate::Pool::Postgres($p) => $body,
        }
    };
}

/// Run `$body` with `$c` bound to the transaction's native connection (`&mut Connection`).
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx {
            $crate::Tx::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::Tx::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

/// The one advisory lock that PostgreSQL write transactions take (see [`Pool::begin_write`]).
const WRITE_LOCK: i64 = 0x5155_4f54_4100; // "QUOTA"
/// The namespace of the per-subject advisory locks (see [`Pool::begin_write_for`]).
const SUBJECT_LOCKS: i32 = 0x5155_4f54; // "QUOT"

impl Pool {
    /// A transaction that reads, then writes depending on what it read (apps, connections,
    /// OAuth codes, keys, idempotency claims): one at a time across every instance, as under
    /// SQLite's `BEGIN IMMEDIATE`. On PostgreSQL a transaction-scoped advisory lock gives the
    /// same serial order, so these rules hold unchanged on several instances. The ledger's hot
    /// path does not take it (its statements are conditional updates in lock order).
    pub async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        match self {
            Pool::Sqlite(p) => Ok(Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?)),
            Pool::Postgres(p) => {
                let mut t = p.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK).execute(&mut *t).await?;
                Ok(Tx::Postgres(t))
            }
        }
    }

    /// Like [`Pool::begin_write`], but serialized only with transactions for the same
    /// `subject` (e.g. one idempotency key): on PostgreSQL a transaction-scoped advisory lock on
    /// the subject's hash (a two-int key, a key space apart from the write lock's), so claims
    /// for different keys run in parallel on every instance. SQLite has one write lock anyway.
    pub async fn begin_write_for(&self, subject: &str) -> Result<Tx, sqlx::Error> {
        match self {
            Pool::Sqlite(p) => Ok(Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?)),
            Pool::Postgres(p) => {
                let mut t = p.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .bind(SUBJECT_LOCKS)
                    .bind(subject)
                    .execute(&mut *t)
                    .await?;
                Ok(Tx::Postgres(t))
            }
        }
    }

    /// A write transaction made of conditional statements only (claims, fan-out, logs): SQLite
    /// takes its write lock up front (`BEGIN IMMEDIATE`, no lock upgrade to fail); PostgreSQL
    /// locks rows as it writes them, without the write lock of [`Pool::begin_write`].
    pub async fn begin_conditional(&self) -> Result<Tx, sqlx::Error> {
        match self {
            Pool::Sqlite(p) => Ok(Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?)),
            Pool::Postgres(p) => Ok(Tx::Postgres(p.begin().await?)),
        }
    }

    /// A transaction whose statements are each safe under concurrency on their own (conditional
    /// updates, inserts that do nothing on conflict): atomic, without the write lock.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self {
            Pool::Sqlite(p) => Ok(Tx::Sqlite(p.begin().await?)),
            Pool::Postgres(p) => Ok(Tx::Postgres(p.begin().await?)),
        }
    }

    /// A read-only transaction that sees one consistent snapshot.
    pub async fn begin_snapshot(&self) -> Result<Tx, sqlx::Error> {
        match self {
            // WAL: a deferred transaction reads one snapshot from its first read on.
            Pool::Sqlite(p) => Ok(Tx::Sqlite(p.begin().await?)),
            Pool::Postgres(p) => {
                Ok(Tx::Postgres(p.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?))
            }
        }
    }

    /// What a claiming subquery appends so that concurrent claimers on PostgreSQL take
    /// different rows (` FOR UPDATE SKIP LOCKED`); nothing on SQLite, whose one writer at a
    /// time makes it moot.
    pub fn skip_locked(&self) -> &'static str {
        match self {
            Pool::Sqlite(_) => "",
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }
}

/// A type both backends decode and encode the same way (`i64`, `String`, `bool`, `Vec<u8>`,
/// their `Option`s).
pub trait Both:
    for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite> + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>
{
}

impl<T> Both for T where
    T: for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
{
}

/// Reading a column by name from either backend's row. Functions that turn rows into structs
/// take `&impl DbRow` and are written once.
pub trait DbRow {
    /// The column `name`, decoded; panics if it is missing or of another type (a query bug).
    fn get<T: Both>(&self, name: &str) -> T;
}

impl DbRow for SqliteRow {
    fn get<T: Both>(&self, name: &str) -> T {
        sqlx::Row::get(self, name)
    }
}

impl DbRow for PgRow {
    fn get<T: Both>(&self, name: &str) -> T {
        sqlx::Row::get(self, name)
    }
}
