//! Webhook persistence (SPEC §8): endpoints, the fan-out of outbox events into deliveries, the
//! claiming of due deliveries by any number of workers, and the per-attempt delivery log.
//!
//! Signing, HTTP and the retry schedule are the server's (`quota_server::webhooks`); this module
//! only keeps the rows consistent. Claims are conditional `UPDATE … RETURNING` statements, so two
//! workers (two instances on one database) never take the same attempt.

use crate::db::DbRow;
use crate::events::{insert_events, OutboxEvent};
use crate::store::{Store, StoreError};
use crate::{on_pool, on_tx};

/// A webhook endpoint as stored (its secret included: callers must not show it again).
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    pub id: String,
    pub developer_id: String,
    pub url: String,
    pub description: String,
    /// Event types; empty means every event.
    pub events: Vec<String>,
    pub low_balance_threshold: Option<i64>,
    pub secret: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub failing_since: Option<i64>,
    pub disabled_at: Option<i64>,
    pub disabled_reason: Option<String>,
}

impl WebhookEndpoint {
    /// Whether this endpoint receives events of type `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }
}

/// Changes to an endpoint (`None`: unchanged).
#[derive(Debug, Default, Clone)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    pub events: Option<Vec<String>>,
    /// `Some(None)` clears the threshold.
    pub low_balance_threshold: Option<Option<i64>>,
    /// `Some(true)` re-enables a disabled endpoint (and forgets its failures).
    pub enabled: Option<bool>,
}

/// One claimed delivery, with what is needed to send it.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: String,
    pub attempts: i64,
    pub created_at: i64,
    pub event_id: String,
    pub event_type: String,
    pub event_created_at: i64,
    pub event_data: String,
    pub sandbox: bool,
    pub endpoint: WebhookEndpoint,
}

/// The outcome of one attempt, for the log.
#[derive(Debug, Clone)]
pub struct AttemptLog {
    pub id: String,
    pub delivery_id: String,
    pub attempted_at: i64,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub response_snippet: Option<String>,
    pub error: Option<String>,
    pub succeeded: bool,
}

/// A delivery and its attempts, for `GET /v1/webhooks/:id/deliveries`.
#[derive(Debug, Clone)]
pub struct DeliveryView {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub log: Vec<AttemptLog>,
}

const ENDPOINT_COLUMNS: &str =
    "id, developer_id, url, description, events, low_balance_threshold, secret, created_at, \
     updated_at, failing_since, disabled_at, disabled_reason";

fn endpoint_from_row(r: &impl DbRow) -> WebhookEndpoint {
    let events: String = r.get("events");
    WebhookEndpoint {
        id: r.get("id"),
        developer_id: r.get("developer_id"),
        url: r.get("url"),
        description: r.get("description"),
        events: if events == "*" { Vec::new() } else { events.split(' ').map(str::to_string).collect() },
        low_balance_threshold: r.get("low_balance_threshold"),
        secret: r.get("secret"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        failing_since: r.get("failing_since"),
        disabled_at: r.get("disabled_at"),
        disabled_reason: r.get("disabled_reason"),
    }
}

fn events_column(events: &[String]) -> String {
    if events.is_empty() {
        "*".into()
    } else {
        events.join(" ")
    }
}

impl Store {
    pub async fn create_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<(), StoreError> {
        on_pool!(self.pool(), |p| {
            sqlx::query(
                "INSERT INTO webhook_endpoints (id, developer_id, url, description, events, low_balance_threshold, secret, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&e.id)
            .bind(&e.developer_id)
            .bind(&e.url)
            .bind(&e.description)
            .bind(events_column(&e.events))
            .bind(e.low_balance_threshold)
            .bind(&e.secret)
            .bind(e.created_at)
            .bind(e.updated_at)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// The developer's endpoints (not deleted), oldest first.
    pub async fn webhook_endpoints(&self, developer_id: &str) -> Result<Vec<WebhookEndpoint>, StoreError> {
        on_pool!(self.pool(), |p| {
            let sql = format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE developer_id = $1 AND deleted_at IS NULL \
                 ORDER BY created_at, id"
            );
            let rows = sqlx::query(&sql).bind(developer_id).fetch_all(p).await?;
            Ok(rows.iter().map(endpoint_from_row).collect())
        })
    }

    /// Every live (not deleted, not disabled) endpoint: the server's in-memory directory.
    pub async fn live_webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        on_pool!(self.pool(), |p| {
            let sql = format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE deleted_at IS NULL AND disabled_at IS NULL"
            );
            let rows = sqlx::query(&sql).fetch_all(p).await?;
            Ok(rows.iter().map(endpoint_from_row).collect())
        })
    }

    pub async fn webhook_endpoint(&self, developer_id: &str, id: &str) -> Result<Option<WebhookEndpoint>, StoreError> {
        on_pool!(self.pool(), |p| {
            let sql = format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND developer_id = $2 AND deleted_at IS NULL"
            );
            let row = sqlx::query(&sql).bind(id).bind(developer_id).fetch_optional(p).await?;
            Ok(row.as_ref().map(endpoint_from_row))
        })
    }

    /// Apply `patch`; `None` when the endpoint does not exist (for this developer).
    pub async fn update_webhook_endpoint(
        &self,
        developer_id: &str,
        id: &str,
        patch: &EndpointPatch,
        now: i64,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        on_pool!(self.pool(), |p| {
            let Some(mut e) = self.webhook_endpoint(developer_id, id).await? else {
                return Ok(None);
            };
            if let Some(url) = &patch.url {
                e.url = url.clone();
            }
            if let Some(d) = &patch.description {
                e.description = d.clone();
            }
            if let Some(events) = &patch.events {
                e.events = events.clone();
            }
            if let Some(t) = patch.low_balance_threshold {
                e.low_balance_threshold = t;
            }
            match patch.enabled {
                Some(true) => {
                    e.disabled_at = None;
                    e.disabled_reason = None;
                    e.failing_since = None;
                }
                Some(false) if e.disabled_at.is_none() => {
                    e.disabled_at = Some(now);
                    e.disabled_reason = Some("disabled by the developer".into());
                }
                _ => {}
            }
            e.updated_at = now;
            sqlx::query(
                "UPDATE webhook_endpoints SET url = $1, description = $2, events = $3, low_balance_threshold = $4, \
                 disabled_at = $5, disabled_reason = $6, failing_since = $7, updated_at = $8 WHERE id = $9",
            )
            .bind(&e.url)
            .bind(&e.description)
            .bind(events_column(&e.events))
            .bind(e.low_balance_threshold)
            .bind(e.disabled_at)
            .bind(&e.disabled_reason)
            .bind(e.failing_since)
            .bind(now)
            .bind(&e.id)
            .execute(p)
            .await?;
            Ok(Some(e))
        })
    }

    /// Soft-delete (deliveries keep pointing at the row); pending deliveries are abandoned.
    pub async fn delete_webhook_endpoint(&self, developer_id: &str, id: &str, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE webhook_endpoints SET deleted_at = $1, updated_at = $1 WHERE id = $2 AND developer_id = $3 \
             AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .bind(developer_id)
        .execute(&mut *c)
        .await?
        .rows_affected())
            > 0;
        on_tx!(&mut tx, |c| {
            sqlx::query("UPDATE webhook_deliveries SET state = 'failed', updated_at = $1 WHERE endpoint_id = $2 AND state = 'pending'")
            .bind(now)
            .bind(id)
            .execute(&mut *c).await?.rows_affected()
        });
        tx.commit().await?;
        Ok(done)
    }

    pub async fn rotate_webhook_secret(
        &self,
        developer_id: &str,
        id: &str,
        secret: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        on_pool!(self.pool(), |p| {
            let n = sqlx::query(
                "UPDATE webhook_endpoints SET secret = $1, updated_at = $2 WHERE id = $3 AND developer_id = $4 \
                 AND deleted_at IS NULL",
            )
            .bind(secret)
            .bind(now)
            .bind(id)
            .bind(developer_id)
            .execute(p)
            .await?
            .rows_affected();
            Ok(n > 0)
        })
    }

    /// Write outbox events outside any other change (the test event).
    pub async fn insert_outbox_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Fan out up to `limit` undispatched events into one delivery per subscribed endpoint
    /// (live, created no later than the event, wanting its type; the named one for events
    /// addressed to one endpoint). Returns how many events were dispatched.
    pub async fn dispatch_events(&self, now: i64, limit: i64) -> Result<usize, StoreError> {
        let mut tx = self.pool().begin().await?;
        // Several instances dispatch at once: each takes rows no other is dispatching.
        let sql = format!(
            "UPDATE events SET dispatched_at = $1 WHERE dispatched_at IS NULL AND seq IN \
             (SELECT seq FROM events WHERE dispatched_at IS NULL ORDER BY seq LIMIT $2{}) \
             RETURNING id, type, developer_id, endpoint_id, created_at",
            self.pool().skip_locked()
        );
        let dispatched = on_tx!(&mut tx, |c| {
            let events = sqlx::query(&sql).bind(now).bind(limit).fetch_all(&mut *c).await?;
            for ev in &events {
                let developer_id: String = ev.get("developer_id");
                let kind: String = ev.get("type");
                let target: Option<String> = ev.get("endpoint_id");
                let created_at: i64 = ev.get("created_at");
                let sql = format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE developer_id = $1 AND deleted_at IS NULL \
                     AND disabled_at IS NULL AND created_at <= $2"
                );
                let endpoints = sqlx::query(&sql).bind(&developer_id).bind(created_at).fetch_all(&mut *c).await?;
                for e in endpoints.iter().map(endpoint_from_row) {
                    let addressed = target.as_deref().is_none_or(|t| t == e.id);
                    if !addressed || !(e.wants(&kind) || target.is_some()) {
                        continue;
                    }
                    sqlx::query(
                        "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, developer_id, state, attempts, \
                         next_attempt_at, lease_until, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, 'pending', 0, $5, 0, $5, $5) \
                         ON CONFLICT (event_id, endpoint_id) DO NOTHING",
                    )
                    .bind(quota_core::ids::new_id("whd_"))
                    .bind(ev.get::<String>("id"))
                    .bind(&e.id)
                    .bind(&developer_id)
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
                }
            }
            events.len()
        });
        tx.commit().await?;
        Ok(dispatched)
    }

    /// Claim up to `limit` due deliveries until `lease_until`: a claimed row is not due for
    /// anyone else until its lease ends (a worker that dies mid-send is retried after it).
    pub async fn claim_deliveries(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        // The conditions are checked again on the row itself, so of two workers racing for a
        // delivery one claims it; on PostgreSQL each also skips rows another is claiming.
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_until = $1 WHERE state = 'pending' AND next_attempt_at <= $2 \
             AND lease_until <= $2 AND id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' \
             AND next_attempt_at <= $2 AND lease_until <= $2 ORDER BY next_attempt_at LIMIT $3{}) \
             RETURNING id, event_id, endpoint_id, attempts, created_at",
            self.pool().skip_locked()
        );
        on_pool!(self.pool(), |p| {
            let claimed = sqlx::query(&sql).bind(lease_until).bind(now).bind(limit).fetch_all(p).await?;
            let mut out = Vec::with_capacity(claimed.len());
            for d in claimed {
                let event_id: String = d.get("event_id");
                let endpoint_id: String = d.get("endpoint_id");
                let ev = sqlx::query("SELECT type, data, sandbox, created_at FROM events WHERE id = $1")
                    .bind(&event_id)
                    .fetch_optional(p)
                    .await?;
                let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1");
                let ep = sqlx::query(&sql).bind(&endpoint_id).fetch_optional(p).await?;
                let (Some(ev), Some(ep)) = (ev, ep) else {
                    return Err(StoreError::Corrupt(format!(
                        "delivery {} lost its event or endpoint",
                        d.get::<String>("id")
                    )));
                };
                out.push(DueDelivery {
                    id: d.get("id"),
                    attempts: d.get("attempts"),
                    created_at: d.get("created_at"),
                    event_id,
                    event_type: ev.get("type"),
                    event_created_at: ev.get("created_at"),
                    event_data: ev.get("data"),
                    sandbox: ev.get("sandbox"),
                    endpoint: endpoint_from_row(&ep),
                });
            }
            Ok(out)
        })
    }

    /// Log an attempt and move the delivery on: done, retried at `next_attempt_at`, or given up
    /// (`None` after a failure). A failure starts (or continues) the endpoint's failing run and
    /// disables it once that run began before `disable_before`; a success ends the run.
    pub async fn finish_attempt(
        &self,
        attempt: &AttemptLog,
        next_attempt_at: Option<i64>,
        endpoint_id: &str,
        disable_before: i64,
    ) -> Result<bool, StoreError> {
        let now = attempt.attempted_at;
        let mut tx = self.pool().begin().await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO webhook_attempts (id, delivery_id, attempted_at, status_code, latency_ms, response_snippet, \
             error, succeeded) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&attempt.id)
        .bind(&attempt.delivery_id)
        .bind(now)
        .bind(attempt.status_code)
        .bind(attempt.latency_ms)
        .bind(&attempt.response_snippet)
        .bind(&attempt.error)
        .bind(attempt.succeeded)
        .execute(&mut *c)
        .await?
        .rows_affected());
        let state = match (attempt.succeeded, next_attempt_at) {
            (true, _) => "succeeded",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        on_tx!(&mut tx, |c| {
            sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2, lease_until = 0, \
             updated_at = $3 WHERE id = $4",
        )
        .bind(state)
        .bind(next_attempt_at.unwrap_or(now))
        .bind(now)
        .bind(&attempt.delivery_id)
        .execute(&mut *c).await?.rows_affected()
        });
        let mut disabled = false;
        if attempt.succeeded {
            on_tx!(&mut tx, |c| sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1")
                .bind(endpoint_id)
                .execute(&mut *c)
                .await?
                .rows_affected());
        } else {
            on_tx!(&mut tx, |c| sqlx::query(
                "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $1) WHERE id = $2"
            )
            .bind(now)
            .bind(endpoint_id)
            .execute(&mut *c)
            .await?
            .rows_affected());
            disabled = on_tx!(&mut tx, |c| sqlx::query(
                "UPDATE webhook_endpoints SET disabled_at = $1, disabled_reason = $2, updated_at = $1 \
                 WHERE id = $3 AND disabled_at IS NULL AND failing_since <= $4",
            )
            .bind(now)
            .bind("failing for 5 days")
            .bind(endpoint_id)
            .bind(disable_before)
            .execute(&mut *c)
            .await?
            .rows_affected())
                > 0;
            if disabled {
                on_tx!(&mut tx, |c| sqlx::query(
                    "UPDATE webhook_deliveries SET state = 'failed', updated_at = $1 WHERE endpoint_id = $2 \
                     AND state = 'pending'",
                )
                .bind(now)
                .bind(endpoint_id)
                .execute(&mut *c)
                .await?
                .rows_affected());
            }
        }
        tx.commit().await?;
        Ok(disabled)
    }

    /// The endpoint's deliveries, newest first, each with its attempts.
    pub async fn webhook_deliveries(
        &self,
        endpoint_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        on_pool!(self.pool(), |p| {
            let rows = sqlx::query(
                "SELECT d.id, d.event_id, e.type, d.state, d.attempts, d.next_attempt_at, d.created_at \
                 FROM webhook_deliveries d JOIN events e ON e.id = d.event_id WHERE d.endpoint_id = $1 \
                 ORDER BY d.created_at DESC, d.id DESC LIMIT $2 OFFSET $3",
            )
            .bind(endpoint_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(p)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let id: String = r.get("id");
                let log = sqlx::query(
                    "SELECT id, delivery_id, attempted_at, status_code, latency_ms, response_snippet, error, succeeded \
                     FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempted_at, id",
                )
                .bind(&id)
                .fetch_all(p)
                .await?
                .iter()
                .map(|a| AttemptLog {
                    id: a.get("id"),
                    delivery_id: a.get("delivery_id"),
                    attempted_at: a.get("attempted_at"),
                    status_code: a.get("status_code"),
                    latency_ms: a.get("latency_ms"),
                    response_snippet: a.get("response_snippet"),
                    error: a.get("error"),
                    succeeded: a.get("succeeded"),
                })
                .collect();
                let state: String = r.get("state");
                out.push(DeliveryView {
                    next_attempt_at: (state == "pending").then(|| r.get("next_attempt_at")),
                    id,
                    event_id: r.get("event_id"),
                    event_type: r.get("type"),
                    state,
                    attempts: r.get("attempts"),
                    created_at: r.get("created_at"),
                    log,
                });
            }
            Ok(out)
        })
    }

    /// Send a delivery again now (same event id). False if it is not the endpoint's.
    pub async fn replay_delivery(&self, endpoint_id: &str, delivery_id: &str, now: i64) -> Result<bool, StoreError> {
        on_pool!(self.pool(), |p| {
            let n = sqlx::query(
                "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1, lease_until = 0, updated_at = $1 \
                 WHERE id = $2 AND endpoint_id = $3",
            )
            .bind(now)
            .bind(delivery_id)
            .bind(endpoint_id)
            .execute(p)
            .await?
            .rows_affected();
            Ok(n > 0)
        })
    }
}
