//! The outbox (SPEC §8, DESIGN §1 *record*): webhook events written in the same transaction as
//! the change that causes them. Delivery (fan-out, signing, retries) is in `webhooks.rs` and the
//! server's worker; this module only writes rows to the `events` table.

use crate::db::Tx;
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

/// One event to deliver later to `developer_id`'s webhook endpoints.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// `evt_…` (time-ordered); writing the same id twice is a no-op.
    pub id: String,
    /// `user.connected`, `user.disconnected`, `balance.updated`, …
    pub kind: String,
    pub developer_id: String,
    pub data: Value,
    pub sandbox: bool,
    pub created_at_ms: i64,
    /// Set for events meant for one endpoint only (`balance.low`, test events).
    pub endpoint_id: Option<String>,
}

impl OutboxEvent {
    /// A new `evt_…` id. Ordered: the `id` index is written with every event, and a random key
    /// dirtied (and sent through the WAL) a page of it per event.
    pub fn new_id() -> String {
        quota_core::ids::new_ordered_id("evt_", crate::clock::now_us())
    }

    pub fn new(kind: &str, developer_id: &str, data: Value, now_ms: i64) -> OutboxEvent {
        OutboxEvent {
            id: OutboxEvent::new_id(),
            kind: kind.to_string(),
            developer_id: developer_id.to_string(),
            data,
            sandbox: false,
            created_at_ms: now_ms,
            endpoint_id: None,
        }
    }
}

/// Insert events inside the caller's transaction, on either backend.
pub(crate) async fn insert_events<'a>(
    tx: &mut Tx,
    events: impl IntoIterator<Item = &'a OutboxEvent>,
) -> Result<(), sqlx::Error> {
    match tx {
        Tx::Sqlite(t) => insert_events_sqlite(t, events).await,
        Tx::Postgres(t) => insert_events_pg(t, events).await,
    }
}

/// SQLite: one statement per 4,000 events.
pub(crate) async fn insert_events_sqlite<'a>(
    conn: &mut SqliteConnection,
    events: impl IntoIterator<Item = &'a OutboxEvent>,
) -> Result<(), sqlx::Error> {
    let events: Vec<&OutboxEvent> = events.into_iter().collect();
    // SQLite allows 32,766 bound values per statement; 7 per row.
    for chunk in events.chunks(4000) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO events (id, type, developer_id, data, sandbox, created_at, endpoint_id) ");
        qb.push_values(chunk, |mut b, e| {
            b.push_bind(&e.id)
                .push_bind(&e.kind)
                .push_bind(&e.developer_id)
                .push_bind(e.data.to_string())
                .push_bind(e.sandbox)
                .push_bind(e.created_at_ms)
                .push_bind(&e.endpoint_id);
        });
        qb.push(" ON CONFLICT (id) DO NOTHING");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// PostgreSQL: one statement, its columns bound as arrays.
pub(crate) async fn insert_events_pg<'a>(
    conn: &mut PgConnection,
    events: impl IntoIterator<Item = &'a OutboxEvent>,
) -> Result<(), sqlx::Error> {
    let events: Vec<&OutboxEvent> = events.into_iter().collect();
    if events.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&OutboxEvent) -> String| events.iter().map(|e| f(e)).collect::<Vec<String>>();
    sqlx::query(
        "INSERT INTO events (id, type, developer_id, data, sandbox, created_at, endpoint_id) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::bigint[], $7::text[]) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(col(|e| e.id.clone()))
    .bind(col(|e| e.kind.clone()))
    .bind(col(|e| e.developer_id.clone()))
    .bind(col(|e| e.data.to_string()))
    .bind(events.iter().map(|e| e.sandbox).collect::<Vec<bool>>())
    .bind(events.iter().map(|e| e.created_at_ms).collect::<Vec<i64>>())
    .bind(events.iter().map(|e| e.endpoint_id.clone()).collect::<Vec<Option<String>>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
