-- PostgreSQL: the same as migrations/sqlite/0003_payments.sql.
-- Payments and payouts (SPEC §10): checkout sessions, the payment provider's events already
-- applied, Stripe Connect accounts and payouts. Money itself moves only as ledger transfers;
-- these tables record what the provider was asked and what it answered. Times are Unix
-- milliseconds; money is integer credits (and the cents sent to the provider).

-- One checkout session per top-up attempt (`cs_…` from Stripe, `cs_dev_…` from the dev
-- provider). `credits` is fixed when the session is created, so a package changed later does
-- not change what a paid session credits.
CREATE TABLE checkout_sessions (
    id           TEXT PRIMARY KEY,
    provider     TEXT NOT NULL CHECK (provider IN ('stripe', 'dev')),
    user_id      TEXT NOT NULL REFERENCES users(id),
    package_id   TEXT NOT NULL,
    price_cents  BIGINT NOT NULL CHECK (price_cents > 0),
    credits      BIGINT NOT NULL CHECK (credits > 0),
    status       TEXT NOT NULL CHECK (status IN ('open', 'completed')),
    success_url  TEXT NOT NULL,
    cancel_url   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    completed_at BIGINT,
    event_id     TEXT
);
CREATE INDEX checkout_sessions_user ON checkout_sessions(user_id, created_at);

-- Stripe events applied, by event id: a replayed event is acknowledged and changes nothing.
CREATE TABLE stripe_events (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    received_at BIGINT NOT NULL
);

-- A developer's Stripe Connect (Express) account.
CREATE TABLE connect_accounts (
    developer_id      TEXT PRIMARY KEY REFERENCES users(id),
    stripe_account_id TEXT NOT NULL UNIQUE,
    created_at        BIGINT NOT NULL
);

-- One payout: it covers the developer's cumulative paid-out earnings from `covered_from` to
-- `covered_to` credits. At most one payout starts at a given point (`covered_from`), so a
-- re-run or a concurrent run finds this row instead of paying again; `idempotency_key`
-- (developer + that range) is the Stripe Idempotency-Key, so a retry never pays twice either.
CREATE TABLE payouts (
    id                 TEXT PRIMARY KEY,
    developer_id       TEXT NOT NULL REFERENCES users(id),
    idempotency_key    TEXT NOT NULL UNIQUE,
    stripe_account_id  TEXT NOT NULL,
    amount_credits     BIGINT NOT NULL CHECK (amount_credits > 0),
    amount_cents       BIGINT NOT NULL CHECK (amount_cents > 0),
    covered_from       BIGINT NOT NULL,
    covered_to         BIGINT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'failed')),
    attempts           BIGINT NOT NULL DEFAULT 0,
    failure_message    TEXT,
    stripe_transfer_id TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    paid_at            BIGINT,
    UNIQUE (developer_id, covered_from)
);
CREATE INDEX payouts_developer ON payouts(developer_id, created_at);
CREATE INDEX payouts_status ON payouts(status);

-- One payout batch at a time per developer, across instances and `quota payouts run`: a
-- lease taken with a conditional upsert, freed at the end (or expired if its holder died).
CREATE TABLE payout_leases (
    developer_id TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    expires_at   BIGINT NOT NULL
);
