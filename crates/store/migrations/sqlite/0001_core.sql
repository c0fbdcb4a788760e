-- Quota core schema (SQLite). Times are Unix milliseconds; money is integer credits.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE api_keys (
    id                    TEXT PRIMARY KEY,
    user_id               TEXT NOT NULL REFERENCES users(id),
    name                  TEXT NOT NULL,
    prefix                TEXT NOT NULL,
    key_hash              TEXT NOT NULL UNIQUE,
    billing_mode          TEXT NOT NULL CHECK (billing_mode IN ('developer', 'user', 'test')),
    rate_limit_per_minute BIGINT,
    app_id                TEXT,
    created_at            BIGINT NOT NULL,
    last_used_at          BIGINT,
    revoked_at            BIGINT
);
CREATE INDEX api_keys_user ON api_keys(user_id);

-- Cached balances, derived from transfers (`quota ledger verify` recomputes them).
CREATE TABLE accounts (
    id         TEXT PRIMARY KEY,
    balance    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Append-only, immutable. `seq` orders them; `origin` names the process that wrote them so an
-- instance can tell its own writes from others' (admin CLI, other instances).
CREATE TABLE transfers (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    from_account TEXT NOT NULL,
    to_account   TEXT NOT NULL,
    amount       BIGINT NOT NULL CHECK (amount > 0),
    kind         TEXT NOT NULL,
    cause        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    origin       TEXT NOT NULL,
    CHECK (from_account <> to_account)
);
CREATE INDEX transfers_from ON transfers(from_account, seq);
CREATE INDEX transfers_to ON transfers(to_account, seq);
CREATE INDEX transfers_cause ON transfers(cause);

-- One row per inference request (SPEC §9). Never prompt or completion text.
CREATE TABLE usage_records (
    id                 TEXT PRIMARY KEY,
    created_at         BIGINT NOT NULL,
    developer_id       TEXT NOT NULL,
    key_id             TEXT,
    app_id             TEXT,
    payer_account      TEXT NOT NULL,
    billing_mode       TEXT NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    input_tokens       BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    output_tokens      BIGINT NOT NULL,
    base_cost          BIGINT NOT NULL,
    markup             BIGINT NOT NULL,
    total              BIGINT NOT NULL,
    status             TEXT NOT NULL,
    latency_ms         BIGINT NOT NULL,
    sandbox            BOOLEAN NOT NULL
);
CREATE INDEX usage_records_developer ON usage_records(developer_id, created_at);

-- Idempotency-Key records (SPEC §0): scope is the caller, key is theirs.
CREATE TABLE idempotency_keys (
    scope         TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        BIGINT,
    content_type  TEXT,
    response_body BLOB,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
