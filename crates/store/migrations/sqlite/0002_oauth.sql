-- User billing via OAuth (SPEC §5, §6): apps, the authorization server's codes, grants and
-- tokens, connections, its signing key, and the outbox of webhook events. Secrets (client
-- secrets, codes, tokens) are stored only as SHA-256 hashes. Times are Unix milliseconds.

-- An OAuth client owned by a developer. `profit_margin_bps` is the markup (SPEC §4.2) in basis
-- points; `welcome_credits` are granted once per user on first connection from the developer's
-- wallet. Deleted apps keep their row (usage records point at them) with `deleted_at` set.
CREATE TABLE apps (
    id                         TEXT PRIMARY KEY,
    developer_id               TEXT NOT NULL REFERENCES users(id),
    name                       TEXT NOT NULL,
    client_id                  TEXT NOT NULL UNIQUE,
    client_secret_hash         TEXT,
    token_endpoint_auth_method TEXT NOT NULL CHECK (token_endpoint_auth_method IN ('client_secret_post', 'none')),
    redirect_uris              TEXT NOT NULL,
    allowed_scopes             TEXT NOT NULL,
    profit_margin_bps          BIGINT NOT NULL DEFAULT 0 CHECK (profit_margin_bps BETWEEN 0 AND 100000),
    welcome_credits            BIGINT NOT NULL DEFAULT 0 CHECK (welcome_credits >= 0),
    created_at                 BIGINT NOT NULL,
    updated_at                 BIGINT NOT NULL,
    deleted_at                 BIGINT,
    CHECK ((token_endpoint_auth_method = 'none') = (client_secret_hash IS NULL))
);
CREATE INDEX apps_developer ON apps(developer_id);

-- A user × app connection, created on first consent. Revoking it ends every grant under it.
CREATE TABLE connections (
    user_id    TEXT NOT NULL REFERENCES users(id),
    app_id     TEXT NOT NULL REFERENCES apps(id),
    scopes     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (user_id, app_id)
);
CREATE INDEX connections_app ON connections(app_id);

-- One authorization: what one code exchange issued, and every refresh after it (a token
-- family). Revoking the grant revokes all its tokens (code reuse, refresh-token reuse).
CREATE TABLE oauth_grants (
    id         TEXT PRIMARY KEY,
    app_id     TEXT NOT NULL REFERENCES apps(id),
    user_id    TEXT NOT NULL REFERENCES users(id),
    scopes     TEXT NOT NULL,
    nonce      TEXT,
    auth_time  BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX oauth_grants_user_app ON oauth_grants(user_id, app_id);

-- Authorization codes: single use, 10 minutes. `grant_id` is set when the code is exchanged,
-- so a second use can revoke what the first issued.
CREATE TABLE oauth_codes (
    code_hash             TEXT PRIMARY KEY,
    app_id                TEXT NOT NULL REFERENCES apps(id),
    user_id               TEXT NOT NULL REFERENCES users(id),
    redirect_uri          TEXT NOT NULL,
    scopes                TEXT NOT NULL,
    code_challenge        TEXT,
    code_challenge_method TEXT CHECK (code_challenge_method IN ('S256', 'plain')),
    nonce                 TEXT,
    auth_time             BIGINT NOT NULL,
    created_at            BIGINT NOT NULL,
    expires_at            BIGINT NOT NULL,
    used_at               BIGINT,
    grant_id              TEXT
);

-- Access (`quota_token_…`, 1 h) and refresh (`quota_refresh_…`, 30 days) tokens. A refresh
-- token is `used_at` once rotated; presenting it again revokes its grant.
CREATE TABLE oauth_tokens (
    token_hash TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
    grant_id   TEXT NOT NULL REFERENCES oauth_grants(id),
    app_id     TEXT NOT NULL REFERENCES apps(id),
    user_id    TEXT NOT NULL REFERENCES users(id),
    scopes     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    revoked_at BIGINT
);
CREATE INDEX oauth_tokens_grant ON oauth_tokens(grant_id);

-- The RS256 key that signs id_tokens: generated once, then read by every start.
CREATE TABLE oauth_signing_keys (
    kid             TEXT PRIMARY KEY,
    private_key_der BLOB NOT NULL,
    created_at      BIGINT NOT NULL
);

-- Outbox (SPEC §8, DESIGN §1 *record*): webhook events written in the same transaction as the
-- change that causes them; the webhooks issue delivers them. `developer_id` is the account
-- whose endpoints receive the event.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    type         TEXT NOT NULL,
    developer_id TEXT NOT NULL,
    data         TEXT NOT NULL,
    sandbox      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT NOT NULL
);
CREATE INDEX events_developer ON events(developer_id, seq);
