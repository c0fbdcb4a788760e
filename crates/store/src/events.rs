//! The outbox (SPEC §8, DESIGN §1 *record*): webhook events written in the same transaction as
//! the change that causes them. Delivery (fan-out, signing, retries) is in `webhooks.rs` and the
//! server's worker; this module only writes rows to the `events` table.

use crate::db::Tx;
use crate::on_tx;
use serde_json::Value;

/// One event to deliver later to `developer_id`'s webhook endpoints.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// `evt_…`; writing the same id twice is a no-op.
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
    pub fn new(kind: &str, developer_id: &str, data: Value, now_ms: i64) -> OutboxEvent {
        OutboxEvent {
            id: quota_core::ids::new_id("evt_"),
            kind: kind.to_string(),
            developer_id: developer_id.to_string(),
            data,
            sandbox: false,
            created_at_ms: now_ms,
            endpoint_id: None,
        }
    }
}

/// The statement that inserts one event, on either backend.
pub(crate) fn insert_event<'q, Db>(
    e: &'q OutboxEvent,
) -> sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments<'q>>
where
    Db: sqlx::Database,
    &'q str: sqlx::Encode<'q, Db> + sqlx::Type<Db>,
    String: sqlx::Encode<'q, Db> + sqlx::Type<Db>,
    Option<&'q str>: sqlx::Encode<'q, Db> + sqlx::Type<Db>,
    bool: sqlx::Encode<'q, Db> + sqlx::Type<Db>,
    i64: sqlx::Encode<'q, Db> + sqlx::Type<Db>,
{
    sqlx::query(
        "INSERT INTO events (id, type, developer_id, data, sandbox, created_at, endpoint_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
    )
    .bind(e.id.as_str())
    .bind(e.kind.as_str())
    .bind(e.developer_id.as_str())
    .bind(e.data.to_string())
    .bind(e.sandbox)
    .bind(e.created_at_ms)
    .bind(e.endpoint_id.as_deref())
}

/// Insert events inside the caller's transaction.
pub(crate) async fn insert_events(tx: &mut Tx, events: &[OutboxEvent]) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| {
        for e in events {
            insert_event(e).execute(&mut *c).await?;
        }
    });
    Ok(())
}
