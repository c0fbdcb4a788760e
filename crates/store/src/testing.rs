//! Test support for this crate's tests and the server's: a fresh database on the backend the
//! test run selects. `QUOTA_TEST_BACKEND` is `sqlite` (the default: a new file) or `postgres`
//! (a new schema in `QUOTA_TEST_POSTGRES_URL`, so tests stay parallel and independent).
//! Quota itself never calls this.

use sqlx::Connection;
use std::path::Path;

/// Whether this run is the PostgreSQL one (`QUOTA_TEST_BACKEND=postgres`).
pub fn on_postgres() -> bool {
    match std::env::var("QUOTA_TEST_BACKEND").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("QUOTA_TEST_BACKEND must be `sqlite` or `postgres`, not `{other}`"),
    }
}

/// `QUOTA_TEST_POSTGRES_URL`, if set.
pub fn postgres_url() -> Option<String> {
    std::env::var("QUOTA_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty())
}

/// A fresh database: `quota.db` in `dir`, or a new PostgreSQL schema.
pub async fn fresh_database_url(dir: &Path) -> String {
    if !on_postgres() {
        return format!("sqlite://{}", dir.join("quota.db").display());
    }
    let base = postgres_url().expect("QUOTA_TEST_BACKEND=postgres needs QUOTA_TEST_POSTGRES_URL");
    fresh_postgres_schema(&base).await
}

/// Prefix of the schemas [`fresh_postgres_schema`] creates (`scripts/test` drops them before
/// each PostgreSQL run).
pub const TEST_SCHEMA_PREFIX: &str = "quota_test_";

/// A new, empty schema in the PostgreSQL at `base`; the URL returned selects it for every
/// connection (`options=-c search_path=…`, which `psql` understands too).
pub async fn fresh_postgres_schema(base: &str) -> String {
    // Named after its creation time, so `scripts/test` can drop old ones without touching a run
    // going on meanwhile.
    let secs = crate::now_ms() / 1000;
    let schema = quota_core::ids::new_id(&format!("{TEST_SCHEMA_PREFIX}{secs}_")).to_lowercase().replace('-', "_");
    let mut conn = sqlx::PgConnection::connect(base).await.expect("connect to QUOTA_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\"")).execute(&mut conn).await.expect("create a test schema");
    let _ = conn.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}
