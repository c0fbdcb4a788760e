//! Usage records (SPEC §9): one per inference request, written in the same transaction as its
//! charge. Never the prompt or completion text.

use crate::db::DbRow;
use crate::{on_pool, on_tx};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct UsageRecord {
    /// Quota's own `req_…` id: the record's key (SPEC §4.3(9)).
    pub id: String,
    /// The `x-request-id` the client sent, if any: stored and shown, never a key.
    pub client_request_id: Option<String>,
    pub created_at: i64,
    /// The developer whose key or app made the request.
    pub developer_id: String,
    pub key_id: Option<String>,
    pub app_id: Option<String>,
    /// The ledger account that paid (`wallet:usr_…`).
    pub payer_account: String,
    pub billing_mode: String,
    pub model: String,
    pub provider: String,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub base_cost: i64,
    pub markup: i64,
    pub total: i64,
    /// `succeeded`, `client_disconnected`, `upstream_error`, …
    pub status: String,
    pub latency_ms: i64,
    pub sandbox: bool,
    /// `evt_…`: the `usage.completed` event this record owes its developer's webhook endpoints
    /// until the webhook worker writes it to the outbox (`events`), with
    /// [`UsageRecord::event_data`] as its data. Committed with the charge, so the event survives
    /// any crash; `None` when no endpoint wanted it, and on records read back.
    pub pending_event: Option<String>,
}

impl UsageRecord {
    /// The account whose wallet paid: the end user in user mode, else the developer.
    pub fn payer_user_id(&self) -> &str {
        self.payer_account.strip_prefix("wallet:").unwrap_or(&self.payer_account)
    }

    /// What left the payer's wallet: the total, or in the sandbox the base alone (its markup
    /// is shown in the record, never taken) — the `quota` object's `credits_used`.
    pub fn credits_used(&self) -> i64 {
        if self.sandbox {
            self.base_cost
        } else {
            self.total
        }
    }

    /// Every prompt-side token: full-price input, cache reads and cache writes.
    pub fn prompt_tokens(&self) -> i64 {
        self.input_tokens + self.cached_tokens + self.cache_write_tokens
    }

    /// `usage.completed`'s `data`: the record (no prompt or completion text exists in it), and
    /// the public docs' names beside ours (SPEC §14): `user_id` (the payer), `prompt_tokens`,
    /// `completion_tokens`, `total_tokens`, `credits_used`.
    pub fn event_data(&self) -> serde_json::Value {
        serde_json::json!({
            "user_id": self.payer_user_id(),
            "prompt_tokens": self.prompt_tokens(),
            "completion_tokens": self.output_tokens,
            "total_tokens": self.prompt_tokens() + self.output_tokens,
            "credits_used": self.credits_used(),
            "request_id": self.id,
            "client_request_id": self.client_request_id,
            "key_id": self.key_id,
            "app_id": self.app_id,
            "payer": self.payer_account,
            "billing_mode": self.billing_mode,
            "model": self.model,
            "provider": self.provider,
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "base_cost": self.base_cost,
            "markup": self.markup,
            "total": self.total,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "sandbox": self.sandbox,
        })
    }

    /// The outbox event this record owes, if any: id, time and sandbox flag are the record's.
    pub fn owed_event(&self) -> Option<crate::OutboxEvent> {
        let id = self.pending_event.as_ref()?;
        Some(crate::OutboxEvent {
            id: id.clone(),
            kind: "usage.completed".into(),
            developer_id: self.developer_id.clone(),
            data: self.event_data(),
            sandbox: self.sandbox,
            created_at_ms: self.created_at,
            endpoint_id: None,
        })
    }
}

/// Which usage records to read (SPEC §9 filters); times are Unix milliseconds, `to` exclusive.
#[derive(Debug, Default, Clone)]
pub struct UsageFilter {
    pub developer_id: String,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub key_id: Option<String>,
    pub app_id: Option<String>,
    pub model: Option<String>,
    pub billing_mode: Option<String>,
}

impl UsageFilter {
    /// ` AND …` conditions for this filter, binding from `$first`; returns the SQL and binds.
    fn conditions(&self) -> (String, Vec<UsageBind<'_>>) {
        let mut sql = String::from("developer_id = $1");
        let mut binds = vec![UsageBind::Text(&self.developer_id)];
        let mut conds: Vec<(&str, &str, UsageBind<'_>)> = Vec::new();
        if let Some(v) = self.from {
            conds.push(("created_at", ">=", UsageBind::Int(v)));
        }
        if let Some(v) = self.to {
            conds.push(("created_at", "<", UsageBind::Int(v)));
        }
        for (col, v) in [
            ("key_id", &self.key_id),
            ("app_id", &self.app_id),
            ("model", &self.model),
            ("billing_mode", &self.billing_mode),
        ] {
            if let Some(v) = v {
                conds.push((col, "=", UsageBind::Text(v)));
            }
        }
        for (col, op, b) in conds {
            binds.push(b);
            sql.push_str(&format!(" AND {col} {op} ${}", binds.len()));
        }
        (sql, binds)
    }
}

enum UsageBind<'a> {
    Text(&'a str),
    Int(i64),
}

pub(crate) const USAGE_COLUMNS: &str = "id, created_at, developer_id, key_id, app_id, payer_account, billing_mode, model, provider, \
     input_tokens, cached_tokens, cache_write_tokens, output_tokens, base_cost, markup, total, status, latency_ms, sandbox, client_request_id";

pub(crate) fn usage_from_row(r: &impl DbRow) -> UsageRecord {
    UsageRecord {
        id: r.get("id"),
        client_request_id: r.get("client_request_id"),
        created_at: r.get("created_at"),
        developer_id: r.get("developer_id"),
        key_id: r.get("key_id"),
        app_id: r.get("app_id"),
        payer_account: r.get("payer_account"),
        billing_mode: r.get("billing_mode"),
        model: r.get("model"),
        provider: r.get("provider"),
        input_tokens: r.get("input_tokens"),
        cached_tokens: r.get("cached_tokens"),
        cache_write_tokens: r.get("cache_write_tokens"),
        output_tokens: r.get("output_tokens"),
        base_cost: r.get("base_cost"),
        markup: r.get("markup"),
        total: r.get("total"),
        status: r.get("status"),
        latency_ms: r.get("latency_ms"),
        sandbox: r.get("sandbox"),
        pending_event: None,
    }
}

/// One row for analytics: a raw record, or a day's aggregate kept after retention.
#[derive(Debug, Clone)]
pub struct UsageAggregate {
    pub at: i64,
    pub key_id: String,
    pub app_id: String,
    pub payer_account: String,
    pub model: String,
    pub sandbox: bool,
    pub requests: i64,
    pub tokens: i64,
    pub base_cost: i64,
    pub markup: i64,
    pub total: i64,
}

/// Milliseconds in a UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// One model's share of what a wallet paid over a period (`GET /v1/me`, SPEC §14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerModelUsage {
    pub model: String,
    pub requests: i64,
    /// Every prompt-side token (cached and cache writes included) plus output tokens.
    pub tokens: i64,
    /// What left the wallet: the total, or in the sandbox the base alone (its markup is shown,
    /// never taken).
    pub credits: i64,
}

impl crate::Store {
    /// Records matching `filter`, newest first.
    pub async fn usage_records(
        &self,
        filter: &UsageFilter,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<UsageRecord>, crate::StoreError> {
        on_pool!(self.pool(), |p| {
            let (cond, binds) = filter.conditions();
            let n = binds.len();
            let sql = format!(
                "SELECT {USAGE_COLUMNS} FROM usage_records WHERE {cond} ORDER BY created_at DESC, id DESC LIMIT ${} OFFSET ${}",
                n + 1,
                n + 2
            );
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = match b {
                    UsageBind::Text(t) => q.bind(t),
                    UsageBind::Int(i) => q.bind(i),
                };
            }
            let rows = q.bind(limit).bind(offset).fetch_all(p).await?;
            Ok(rows.iter().map(usage_from_row).collect())
        })
    }

    /// Keyset pagination: up to `limit` records of `filter`, newest first, strictly after
    /// `after` (the `(created_at, id)` of the last record of the previous page) in that order.
    /// Each page costs one index range scan however deep it is (an offset re-reads every row
    /// before it), and a record written meanwhile never shifts a page.
    pub async fn usage_records_after(
        &self,
        filter: &UsageFilter,
        after: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<UsageRecord>, crate::StoreError> {
        on_pool!(self.pool(), |p| {
            let (mut cond, mut binds) = filter.conditions();
            if let Some((at, id)) = after {
                binds.push(UsageBind::Int(at));
                binds.push(UsageBind::Text(id));
                let (a, i) = (binds.len() - 1, binds.len());
                cond.push_str(&format!(" AND (created_at < ${a} OR (created_at = ${a} AND id < ${i}))"));
            }
            let sql = format!(
                "SELECT {USAGE_COLUMNS} FROM usage_records WHERE {cond} ORDER BY created_at DESC, id DESC LIMIT ${}",
                binds.len() + 1
            );
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = match b {
                    UsageBind::Text(t) => q.bind(t),
                    UsageBind::Int(i) => q.bind(i),
                };
            }
            let rows = q.bind(limit).fetch_all(p).await?;
            Ok(rows.iter().map(usage_from_row).collect())
        })
    }

    /// The developer's usage in `[from, to)`: raw records, plus the daily aggregates of records
    /// that retention removed (so totals survive it; their time is the day's start).
    pub async fn usage_aggregates(
        &self,
        developer_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageAggregate>, crate::StoreError> {
        on_pool!(self.pool(), |p| {
            let rows = sqlx::query(
                "SELECT created_at AS at, COALESCE(key_id, '') AS key_id, COALESCE(app_id, '') AS app_id, payer_account, \
                 model, sandbox, CAST(1 AS BIGINT) AS requests, input_tokens + output_tokens AS tokens, base_cost, markup, total \
                 FROM usage_records WHERE developer_id = $1 AND created_at >= $2 AND created_at < $3 \
                 UNION ALL \
                 SELECT day AS at, key_id, app_id, payer_account, model, sandbox, requests, input_tokens + output_tokens AS tokens, \
                 base_cost, markup, total FROM usage_daily WHERE developer_id = $1 AND day >= $2 AND day < $3",
            )
            .bind(developer_id)
            .bind(from)
            .bind(to)
            .fetch_all(p)
            .await?;
            Ok(rows
                .iter()
                .map(|r| UsageAggregate {
                    at: r.get("at"),
                    key_id: r.get("key_id"),
                    app_id: r.get("app_id"),
                    payer_account: r.get("payer_account"),
                    model: r.get("model"),
                    sandbox: r.get("sandbox"),
                    requests: r.get("requests"),
                    tokens: r.get("tokens"),
                    base_cost: r.get("base_cost"),
                    markup: r.get("markup"),
                    total: r.get("total"),
                })
                .collect())
        })
    }

    /// What `payer_account` paid in `[from, to)`, by model, summed by the database over the
    /// raw records (index `usage_records_payer`) and the daily aggregates retention left: one
    /// row per model comes back, never the records. Requests that failed before a charge count
    /// as requests with no tokens and no credits. Largest spend first.
    pub async fn payer_usage_by_model(
        &self,
        payer_account: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<PayerModelUsage>, crate::StoreError> {
        on_pool!(self.pool(), |p| {
            let rows = sqlx::query(
                "SELECT model, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(tokens) AS BIGINT) AS tokens, \
                 CAST(SUM(credits) AS BIGINT) AS credits FROM ( \
                 SELECT model, COUNT(*) AS requests, \
                 SUM(input_tokens + cached_tokens + cache_write_tokens + output_tokens) AS tokens, \
                 SUM(CASE WHEN sandbox THEN base_cost ELSE total END) AS credits \
                 FROM usage_records WHERE payer_account = $1 AND created_at >= $2 AND created_at < $3 GROUP BY model \
                 UNION ALL \
                 SELECT model, SUM(requests) AS requests, SUM(input_tokens + cached_tokens + output_tokens) AS tokens, \
                 SUM(CASE WHEN sandbox THEN base_cost ELSE total END) AS credits \
                 FROM usage_daily WHERE payer_account = $1 AND day >= $2 AND day < $3 GROUP BY model \
                 ) AS by_model GROUP BY model ORDER BY credits DESC, model",
            )
            .bind(payer_account)
            .bind(from)
            .bind(to)
            .fetch_all(p)
            .await?;
            Ok(rows
                .iter()
                .map(|r| PayerModelUsage {
                    model: r.get("model"),
                    requests: r.get("requests"),
                    tokens: r.get("tokens"),
                    credits: r.get("credits"),
                })
                .collect())
        })
    }

    /// Retention (SPEC §9): fold records older than `cutoff` into per-day aggregates, then
    /// delete them, in one transaction; a record still owing its `usage.completed` event waits
    /// for a later run (the fold adds). `cutoff` is rounded down to a UTC day so a day is
    /// never half raw, half aggregated. Returns how many records were removed.
    pub async fn expire_usage(&self, cutoff: i64) -> Result<u64, crate::StoreError> {
        let cutoff = cutoff.div_euclid(DAY_MS) * DAY_MS;
        // Every instance runs retention: one at a time (the write lock), so a record is folded
        // into the aggregates once, by whichever instance gets there first.
        let mut tx = self.pool().begin_write().await?;
        on_tx!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO usage_daily (day, developer_id, key_id, app_id, payer_account, billing_mode, model, sandbox, \
             requests, input_tokens, cached_tokens, output_tokens, base_cost, markup, total) \
             SELECT (created_at / 86400000) * 86400000, developer_id, COALESCE(key_id, ''), COALESCE(app_id, ''), \
             payer_account, billing_mode, model, sandbox, COUNT(*), SUM(input_tokens), SUM(cached_tokens), \
             SUM(output_tokens), SUM(base_cost), SUM(markup), SUM(total) FROM usage_records \
             WHERE created_at < $1 AND pending_event IS NULL \
             GROUP BY (created_at / 86400000) * 86400000, developer_id, COALESCE(key_id, ''), COALESCE(app_id, ''), \
             payer_account, billing_mode, model, sandbox \
             ON CONFLICT (day, developer_id, key_id, app_id, payer_account, billing_mode, model, sandbox) DO UPDATE SET \
             requests = usage_daily.requests + excluded.requests, \
             input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
             cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens, \
             output_tokens = usage_daily.output_tokens + excluded.output_tokens, \
             base_cost = usage_daily.base_cost + excluded.base_cost, markup = usage_daily.markup + excluded.markup, \
             total = usage_daily.total + excluded.total",
        )
        .bind(cutoff)
        .execute(&mut *c).await?.rows_affected()
        });
        let n = on_tx!(&mut tx, |c| sqlx::query(
            "DELETE FROM usage_records WHERE created_at < $1 AND pending_event IS NULL"
        )
        .bind(cutoff)
        .execute(&mut *c)
        .await?
        .rows_affected());
        tx.commit().await?;
        Ok(n)
    }

    /// Transfers that touched any of `accounts`, newest first.
    pub async fn transfers_touching(
        &self,
        accounts: &[String],
        offset: i64,
        limit: i64,
    ) -> Result<Vec<quota_core::Transfer>, crate::StoreError> {
        on_pool!(self.pool(), |p| {
            let list: Vec<String> = (0..accounts.len()).map(|i| format!("${}", i + 1)).collect();
            let list = list.join(", ");
            let n = accounts.len();
            let sql = format!(
                "SELECT id, from_account, to_account, amount, kind, cause, created_at FROM transfers \
                 WHERE from_account IN ({list}) OR to_account IN ({list}) ORDER BY seq DESC LIMIT ${} OFFSET ${}",
                n + 1,
                n + 2
            );
            let mut q = sqlx::query(&sql);
            for a in accounts {
                q = q.bind(a);
            }
            let rows = q.bind(limit).bind(offset).fetch_all(p).await?;
            rows.iter()
                .map(|r| {
                    let corrupt = crate::StoreError::Corrupt;
                    Ok(quota_core::transfers::restored(
                        r.get("id"),
                        r.get::<String>("from_account").parse().map_err(corrupt)?,
                        r.get::<String>("to_account").parse().map_err(corrupt)?,
                        quota_core::Credits::new(r.get("amount")),
                        r.get::<String>("kind").parse().map_err(corrupt)?,
                        r.get("cause"),
                        r.get("created_at"),
                    ))
                })
                .collect()
        })
    }
}
