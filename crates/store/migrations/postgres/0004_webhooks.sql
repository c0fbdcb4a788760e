-- PostgreSQL: the same as migrations/sqlite/0004_webhooks.sql.
-- Webhooks (SPEC §8) and usage retention (SPEC §9). Times are Unix milliseconds.

-- A developer's endpoint. `events` is a space-separated list of event types ('*' = all).
-- `secret` is the whole `whsec_…` string: it must stay readable to sign deliveries (see the
-- README, "Webhook secrets"); it is returned once, on creation and rotation, and never logged.
-- `failing_since` is the time of the first failed attempt of an unbroken run of failures;
-- after 5 days of it the endpoint is disabled (`disabled_at`, `disabled_reason`).
CREATE TABLE webhook_endpoints (
    id                    TEXT PRIMARY KEY,
    developer_id          TEXT NOT NULL REFERENCES users(id),
    url                   TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    events                TEXT NOT NULL,
    low_balance_threshold BIGINT,
    secret                TEXT NOT NULL,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    failing_since         BIGINT,
    disabled_at           BIGINT,
    disabled_reason       TEXT,
    deleted_at            BIGINT
);
CREATE INDEX webhook_endpoints_developer ON webhook_endpoints(developer_id);

-- Outbox rows meant for one endpoint only (`balance.low` crossings of its threshold, test
-- events) name it; `dispatched_at` is set once the event has been fanned out to deliveries.
ALTER TABLE events ADD COLUMN endpoint_id TEXT;
ALTER TABLE events ADD COLUMN dispatched_at BIGINT;
CREATE INDEX events_dispatch ON events(dispatched_at, seq);

-- One event to one endpoint. A worker claims a due row by moving `lease_until` forward in a
-- conditional UPDATE, so several instances never send the same attempt twice.
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,
    endpoint_id     TEXT NOT NULL REFERENCES webhook_endpoints(id),
    developer_id    TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint_id, created_at);

-- The delivery log: one row per attempt.
CREATE TABLE webhook_attempts (
    id               TEXT PRIMARY KEY,
    delivery_id      TEXT NOT NULL REFERENCES webhook_deliveries(id),
    attempted_at     BIGINT NOT NULL,
    status_code      BIGINT,
    latency_ms       BIGINT NOT NULL,
    response_snippet TEXT,
    error            TEXT,
    succeeded        BOOLEAN NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts(delivery_id, attempted_at);

-- Usage aggregated per UTC day, kept after the raw records expire (SPEC §9 retention).
CREATE TABLE usage_daily (
    day           BIGINT NOT NULL,
    developer_id  TEXT NOT NULL,
    key_id        TEXT NOT NULL DEFAULT '',
    app_id        TEXT NOT NULL DEFAULT '',
    payer_account TEXT NOT NULL,
    billing_mode  TEXT NOT NULL,
    model         TEXT NOT NULL,
    sandbox       BOOLEAN NOT NULL,
    requests      BIGINT NOT NULL,
    input_tokens  BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    base_cost     BIGINT NOT NULL,
    markup        BIGINT NOT NULL,
    total         BIGINT NOT NULL,
    PRIMARY KEY (day, developer_id, key_id, app_id, payer_account, billing_mode, model, sandbox)
);
