//! Webhook persistence (SPEC §8): endpoints, the fan-out of outbox events into deliveries, the
//! claiming of due deliveries by any number of workers, and the per-attempt delivery log.
//!
//! Signing, HTTP and the retry schedule are the server's (`quota_server::webhooks`); this module
//! only keeps the rows consistent. Claims are conditional `UPDATE … RETURNING` statements, so two
//! workers (two instances on one database) never take the same attempt.

use crate::db::DbRow;
use crate::db::Tx;
use crate::events::{insert_events, OutboxEvent};
use crate::store::{Store, StoreError};
use crate::usage::{usage_from_row, UsageRecord, USAGE_COLUMNS};
use crate::{on_pool, on_tx};
use sqlx::QueryBuilder;
use std::collections::{HashMap, HashSet};

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

/// One attempt the worker finished: its log row and when to try again (`None`: no retry).
#[derive(Debug, Clone)]
pub struct FinishedAttempt {
    pub log: AttemptLog,
    pub endpoint_id: String,
    pub next_attempt_at: Option<i64>,
}

/// Where an endpoint's failing run stands after a batch of attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailingRun {
    /// Only failures: the run goes on (or starts at this time if there was none).
    Continues(i64),
    /// A success, then failures: a new run starts at the first failure after the last success.
    StartsAfterSuccess(i64),
}

impl FailingRun {
    fn at(self) -> i64 {
        match self {
            FailingRun::Continues(t) | FailingRun::StartsAfterSuccess(t) => t,
        }
    }
}

/// Per endpoint in a batch, in order of first appearance: `None` if its last attempt
/// succeeded (its failing run ends), else where its failing run stands.
fn failing_runs(finished: &[FinishedAttempt]) -> Vec<(&str, Option<FailingRun>)> {
    let mut ordered: Vec<&FinishedAttempt> = finished.iter().collect();
    ordered.sort_by_key(|f| f.log.attempted_at);
    // (endpoint, saw a success, run)
    let mut out: Vec<(&str, bool, Option<FailingRun>)> = Vec::new();
    for f in ordered {
        let i = out.iter().position(|(e, _, _)| *e == f.endpoint_id).unwrap_or_else(|| {
            out.push((f.endpoint_id.as_str(), false, None));
            out.len() - 1
        });
        let (_, saw_success, run) = &mut out[i];
        if f.log.succeeded {
            *saw_success = true;
            *run = None;
        } else if run.is_none() {
            let t = f.log.attempted_at;
            *run = Some(if *saw_success { FailingRun::StartsAfterSuccess(t) } else { FailingRun::Continues(t) });
        }
    }
    out.into_iter().map(|(e, _, run)| (e, run)).collect()
}

/// Most values in one `IN (…)` list.
const IN_LIST_MAX: usize = 500;

/// Append `(?, ?, …)` binding `values` (either backend).
fn push_in_list<'a, Db>(qb: &mut QueryBuilder<'a, Db>, values: &'a [impl AsRef<str> + Sync])
where
    Db: sqlx::Database,
    &'a str: sqlx::Encode<'a, Db> + sqlx::Type<Db>,
{
    qb.push("(");
    let mut sep = qb.separated(", ");
    for v in values {
        sep.push_bind(v.as_ref());
    }
    sep.push_unseparated(")");
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

    /// Apply `patch`; `None` when the endpoint does not exist (for this developer). One
    /// conditional `UPDATE` that writes only the patched columns, so it cannot undo what the
    /// delivery worker changed meanwhile (a failing run, a 5-day disable) or another edit.
    pub async fn update_webhook_endpoint(
        &self,
        developer_id: &str,
        id: &str,
        patch: &EndpointPatch,
        now: i64,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        let enabled = match patch.enabled {
            Some(true) => "enable",
            Some(false) => "disable",
            None => "",
        };
        let sql = format!(
            "UPDATE webhook_endpoints SET url = COALESCE($1, url), description = COALESCE($2, description), \
             events = COALESCE($3, events), \
             low_balance_threshold = CASE WHEN $4 THEN $5 ELSE low_balance_threshold END, \
             disabled_reason = CASE WHEN $6 = 'enable' THEN NULL \
               WHEN $6 = 'disable' AND disabled_at IS NULL THEN 'disabled by the developer' ELSE disabled_reason END, \
             disabled_at = CASE WHEN $6 = 'enable' THEN NULL WHEN $6 = 'disable' THEN COALESCE(disabled_at, $7) \
               ELSE disabled_at END, \
             failing_since = CASE WHEN $6 = 'enable' THEN NULL ELSE failing_since END, \
             updated_at = $7 \
             WHERE id = $8 AND developer_id = $9 AND deleted_at IS NULL RETURNING {ENDPOINT_COLUMNS}"
        );
        on_pool!(self.pool(), |p| {
            let row = sqlx::query(&sql)
                .bind(&patch.url)
                .bind(&patch.description)
                .bind(patch.events.as_deref().map(events_column))
                .bind(patch.low_balance_threshold.is_some())
                .bind(patch.low_balance_threshold.flatten())
                .bind(enabled)
                .bind(now)
                .bind(id)
                .bind(developer_id)
                .fetch_optional(p)
                .await?;
            Ok(row.as_ref().map(endpoint_from_row))
        })
    }

    /// Soft-delete (deliveries keep pointing at the row); pending deliveries are abandoned.
    pub async fn delete_webhook_endpoint(&self, developer_id: &str, id: &str, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let out = on_tx!(&mut tx, |c| {
            let done = sqlx::query(
                "UPDATE webhook_endpoints SET deleted_at = $1, updated_at = $1 WHERE id = $2 AND developer_id = $3 \
                 AND deleted_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .bind(developer_id)
            .execute(&mut *c)
            .await?
            .rows_affected()
                > 0;
            sqlx::query("UPDATE webhook_deliveries SET state = 'failed', updated_at = $1 WHERE endpoint_id = $2 AND state = 'pending'")
                .bind(now)
                .bind(id)
                .execute(&mut *c)
                .await?;
            done
        });
        tx.commit().await?;
        Ok(out)
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
    /// addressed to one endpoint). Returns how many events were dispatched. One write
    /// transaction and a fixed number of statements per call, whatever the batch's size: the
    /// worker shares SQLite's one write lock with the ledger writer.
    pub async fn dispatch_events(&self, now: i64, limit: i64) -> Result<usize, StoreError> {
        let skip_locked = self.pool().skip_locked();
        let mut tx = self.pool().begin_conditional().await?;
        let materialized = self.write_owed_usage_events(&mut tx, limit).await?;
        let out = on_tx!(&mut tx, |c| {
            // Conditions only in the subquery: the outer statement then finds its rows by key
            // instead of walking every undispatched event (the backlog) a second time. Several
            // instances dispatch at once: on PostgreSQL the subquery locks its rows, skipping
            // those another instance is taking and re-checking the condition on any it updated.
            let events = sqlx::query(&format!(
                "UPDATE events SET dispatched_at = $1 WHERE seq IN \
                 (SELECT seq FROM events WHERE dispatched_at IS NULL ORDER BY seq LIMIT $2{skip_locked}) \
                 RETURNING id, type, developer_id, endpoint_id, created_at",
            ))
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?;
            if events.is_empty() && materialized == 0 {
                // Nothing changed: the transaction rolls back.
                return Ok(0);
            }
            let developers: HashSet<String> = events.iter().map(|ev| ev.get("developer_id")).collect();
            let mut endpoints: HashMap<String, Vec<WebhookEndpoint>> = HashMap::new();
            for chunk in developers.into_iter().collect::<Vec<_>>().chunks(IN_LIST_MAX) {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE deleted_at IS NULL AND disabled_at IS NULL \
                     AND developer_id IN "
                ));
                push_in_list(&mut qb, chunk);
                for e in qb.build().fetch_all(&mut *c).await?.iter().map(endpoint_from_row) {
                    endpoints.entry(e.developer_id.clone()).or_default().push(e);
                }
            }
            let mut deliveries: Vec<(String, String, String)> = Vec::new();
            for ev in &events {
                let developer_id: String = ev.get("developer_id");
                let kind: String = ev.get("type");
                let target: Option<String> = ev.get("endpoint_id");
                let created_at: i64 = ev.get("created_at");
                for e in endpoints.get(&developer_id).into_iter().flatten() {
                    let addressed = match &target {
                        Some(t) => *t == e.id,
                        None => e.wants(&kind),
                    };
                    if addressed && e.created_at <= created_at {
                        deliveries.push((ev.get("id"), e.id.clone(), developer_id.clone()));
                    }
                }
            }
            // SQLite allows 32,766 bound values per statement; 5 per row.
            for chunk in deliveries.chunks(4000) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, developer_id, state, attempts, \
                     next_attempt_at, lease_until, created_at, updated_at) ",
                );
                qb.push_values(chunk, |mut b, (event_id, endpoint_id, developer_id)| {
                    b.push_bind(quota_core::ids::new_ordered_id("whd_", crate::clock::now_us()))
                        .push_bind(event_id)
                        .push_bind(endpoint_id)
                        .push_bind(developer_id)
                        .push("'pending'")
                        .push("0")
                        .push_bind(now)
                        .push("0")
                        .push_bind(now)
                        .push_bind(now);
                });
                qb.push(" ON CONFLICT (event_id, endpoint_id) DO NOTHING");
                qb.build().execute(&mut *c).await?;
            }
            events.len()
        });
        tx.commit().await?;
        Ok(out.max(materialized))
    }

    /// Write to the outbox the `usage.completed` events that up to `limit` usage records owe
    /// (oldest first; see [`UsageRecord::pending_event`]) and clear what they owe, in `tx`.
    /// On PostgreSQL several instances take different records (`SKIP LOCKED`).
    async fn write_owed_usage_events(&self, tx: &mut Tx, limit: i64) -> Result<usize, StoreError> {
        let sql = format!(
            "SELECT {USAGE_COLUMNS}, pending_event FROM usage_records WHERE pending_event IS NOT NULL \
             ORDER BY created_at LIMIT $1{}",
            self.pool().skip_locked()
        );
        let owed: Vec<UsageRecord> = on_tx!(&mut *tx, |c| sqlx::query(&sql)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?
            .iter()
            .map(|r| UsageRecord { pending_event: r.get("pending_event"), ..usage_from_row(r) })
            .collect());
        if owed.is_empty() {
            return Ok(0);
        }
        let events: Vec<OutboxEvent> = owed.iter().filter_map(UsageRecord::owed_event).collect();
        insert_events(tx, &events).await?;
        let ids: Vec<&str> = owed.iter().map(|u| u.id.as_str()).collect();
        for chunk in ids.chunks(IN_LIST_MAX) {
            on_tx!(&mut *tx, |c| {
                let mut qb = QueryBuilder::new("UPDATE usage_records SET pending_event = NULL WHERE id IN ");
                push_in_list(&mut qb, chunk);
                qb.build().execute(&mut *c).await?.rows_affected()
            });
        }
        Ok(owed.len())
    }

    /// What webhook delivery still has to do: (usage records owing their event, outbox events
    /// not fanned out, deliveries pending — due now or retrying later). Each count reads a
    /// partial or leading index.
    pub async fn webhook_backlog(&self) -> Result<(i64, i64, i64), StoreError> {
        let counts = on_pool!(self.pool(), |p| sqlx::query(
            "SELECT (SELECT COUNT(*) FROM usage_records WHERE pending_event IS NOT NULL) AS owed, \
             (SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL) AS outbox, \
             (SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending') AS pending"
        )
        .fetch_one(p)
        .await
        .map(|r| (r.get("owed"), r.get("outbox"), r.get("pending")))?);
        Ok(counts)
    }

    /// Claim up to `limit` due deliveries until `lease_until`: a claimed row is not due for
    /// anyone else until its lease ends (a worker that dies mid-send is retried after it). One
    /// write statement, then two reads for the claimed rows' events and endpoints.
    pub async fn claim_deliveries(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        // Conditions only in the subquery (one statement: atomic under SQLite's write lock): the
        // outer statement finds its rows by key. Repeated outside, SQLite walks every due row of
        // the backlog through the (state, next_attempt_at) index on each claim. On PostgreSQL
        // the subquery locks its rows (`FOR UPDATE SKIP LOCKED`): a row another worker is
        // claiming is skipped, and one it claimed meanwhile is re-checked and dropped, so of two
        // workers racing for a delivery exactly one claims it.
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_until = $1 WHERE id IN (SELECT id FROM webhook_deliveries \
             WHERE state = 'pending' AND next_attempt_at <= $2 AND lease_until <= $2 \
             ORDER BY next_attempt_at LIMIT $3{}) RETURNING id, event_id, endpoint_id, attempts, created_at",
            self.pool().skip_locked()
        );
        on_pool!(self.pool(), |p| {
            let claimed = sqlx::query(&sql).bind(lease_until).bind(now).bind(limit).fetch_all(p).await?;
            if claimed.is_empty() {
                return Ok(Vec::new());
            }
            let event_ids: HashSet<String> = claimed.iter().map(|d| d.get("event_id")).collect();
            let endpoint_ids: HashSet<String> = claimed.iter().map(|d| d.get("endpoint_id")).collect();
            let mut events: HashMap<String, _> = HashMap::new();
            for chunk in event_ids.into_iter().collect::<Vec<_>>().chunks(IN_LIST_MAX) {
                let mut qb = QueryBuilder::new("SELECT id, type, data, sandbox, created_at FROM events WHERE id IN ");
                push_in_list(&mut qb, chunk);
                for r in qb.build().fetch_all(p).await? {
                    events.insert(r.get("id"), r);
                }
            }
            let mut endpoints: HashMap<String, WebhookEndpoint> = HashMap::new();
            for chunk in endpoint_ids.into_iter().collect::<Vec<_>>().chunks(IN_LIST_MAX) {
                let mut qb =
                    QueryBuilder::new(format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id IN "));
                push_in_list(&mut qb, chunk);
                for e in qb.build().fetch_all(p).await?.iter().map(endpoint_from_row) {
                    endpoints.insert(e.id.clone(), e);
                }
            }
            let mut out = Vec::with_capacity(claimed.len());
            for d in claimed {
                let event_id: String = d.get("event_id");
                let endpoint_id: String = d.get("endpoint_id");
                let (Some(ev), Some(ep)) = (events.get(&event_id), endpoints.get(&endpoint_id)) else {
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
                    endpoint: ep.clone(),
                });
            }
            Ok(out)
        })
    }

    /// Log a batch of attempts and move their deliveries on, in one transaction: each delivery
    /// done, retried at its `next_attempt_at`, or given up (`None` after a failure). Per
    /// endpoint, a failure starts (or continues) its failing run and a later success ends it;
    /// an endpoint whose run began before `disable_before` is disabled and its pending
    /// deliveries abandoned. Returns the endpoints disabled.
    pub async fn finish_attempts(
        &self,
        finished: &[FinishedAttempt],
        disable_before: i64,
    ) -> Result<Vec<String>, StoreError> {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        let now = finished.iter().map(|f| f.log.attempted_at).max().unwrap_or_default();
        let mut tx = self.pool().begin_conditional().await?;
        let out = on_tx!(&mut tx, |c| {
            // SQLite allows 32,766 bound values per statement; 8 per row.
            for chunk in finished.chunks(4000) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO webhook_attempts (id, delivery_id, attempted_at, status_code, latency_ms, \
                     response_snippet, error, succeeded) ",
                );
                qb.push_values(chunk, |mut b, f| {
                    let a = &f.log;
                    b.push_bind(&a.id)
                        .push_bind(&a.delivery_id)
                        .push_bind(a.attempted_at)
                        .push_bind(a.status_code)
                        .push_bind(a.latency_ms)
                        .push_bind(&a.response_snippet)
                        .push_bind(&a.error)
                        .push_bind(a.succeeded);
                });
                qb.build().execute(&mut *c).await?;
            }
            // Successes, the common case, in one statement per chunk; failures one by one.
            let succeeded: Vec<&str> =
                finished.iter().filter(|f| f.log.succeeded).map(|f| f.log.delivery_id.as_str()).collect();
            for chunk in succeeded.chunks(IN_LIST_MAX) {
                let mut qb = QueryBuilder::new("UPDATE webhook_deliveries SET state = 'succeeded', ");
                qb.push("attempts = attempts + 1, lease_until = 0, updated_at = ").push_bind(now).push(" WHERE id IN ");
                push_in_list(&mut qb, chunk);
                qb.build().execute(&mut *c).await?;
            }
            for f in finished.iter().filter(|f| !f.log.succeeded) {
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2, \
                     lease_until = 0, updated_at = $3 WHERE id = $4",
                )
                .bind(if f.next_attempt_at.is_some() { "pending" } else { "failed" })
                .bind(f.next_attempt_at.unwrap_or(f.log.attempted_at))
                .bind(f.log.attempted_at)
                .bind(&f.log.delivery_id)
                .execute(&mut *c)
                .await?;
            }
            let mut disabled = Vec::new();
            for (endpoint_id, run) in failing_runs(finished) {
                let Some(since) = run else {
                    sqlx::query(
                        "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
                    )
                    .bind(endpoint_id)
                    .execute(&mut *c)
                    .await?;
                    continue;
                };
                let sql = match since {
                    FailingRun::Continues(_) => {
                        "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $1) WHERE id = $2"
                    }
                    FailingRun::StartsAfterSuccess(_) => {
                        "UPDATE webhook_endpoints SET failing_since = $1 WHERE id = $2"
                    }
                };
                sqlx::query(sql).bind(since.at()).bind(endpoint_id).execute(&mut *c).await?;
                let off = sqlx::query(
                    "UPDATE webhook_endpoints SET disabled_at = $1, disabled_reason = $2, updated_at = $1 \
                     WHERE id = $3 AND disabled_at IS NULL AND failing_since <= $4",
                )
                .bind(now)
                .bind("failing for 5 days")
                .bind(endpoint_id)
                .bind(disable_before)
                .execute(&mut *c)
                .await?
                .rows_affected()
                    > 0;
                if off {
                    sqlx::query(
                        "UPDATE webhook_deliveries SET state = 'failed', updated_at = $1 WHERE endpoint_id = $2 \
                         AND state = 'pending'",
                    )
                    .bind(now)
                    .bind(endpoint_id)
                    .execute(&mut *c)
                    .await?;
                    disabled.push(endpoint_id.to_string());
                }
            }
            disabled
        });
        tx.commit().await?;
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn done(endpoint: &str, at: i64, succeeded: bool) -> FinishedAttempt {
        FinishedAttempt {
            log: AttemptLog {
                id: format!("wha_{endpoint}_{at}"),
                delivery_id: format!("whd_{at}"),
                attempted_at: at,
                status_code: Some(if succeeded { 200 } else { 500 }),
                latency_ms: 1,
                response_snippet: None,
                error: None,
                succeeded,
            },
            endpoint_id: endpoint.into(),
            next_attempt_at: None,
        }
    }

    #[test]
    fn a_batch_leaves_each_endpoint_where_its_last_attempts_put_it() {
        // Given out of order: the batch is read in time order.
        let batch = [
            done("a", 30, false),
            done("a", 10, false),
            done("b", 10, false),
            done("b", 20, true),
            done("c", 10, true),
            done("c", 20, false),
            done("c", 40, false),
            done("d", 10, false),
            done("d", 20, true),
        ];
        let runs = failing_runs(&batch);
        assert_eq!(
            runs,
            vec![
                ("a", Some(FailingRun::Continues(10))),
                ("b", None),
                ("c", Some(FailingRun::StartsAfterSuccess(20))),
                ("d", None),
            ]
        );
    }
}
