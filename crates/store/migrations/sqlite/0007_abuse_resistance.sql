-- Issue 14 (SPEC §5, §12).
--
-- The master key check: a value sealed with the master key that encrypts the OIDC signing key
-- and webhook secrets at rest. A start with another key (or none) cannot open it and stops
-- with a clear error. One row.
CREATE TABLE master_key_check (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    sealed     BLOB NOT NULL,
    created_at BIGINT NOT NULL
);

-- The markup a connection's user consented to (basis points): what they pay while the app's
-- margin is higher; a raise applies after they approve the new consent page. Existing
-- connections consented to the app's margin as it is now.
ALTER TABLE connections ADD COLUMN profit_margin_bps BIGINT;
UPDATE connections SET profit_margin_bps = (SELECT a.profit_margin_bps FROM apps a WHERE a.id = connections.app_id);
