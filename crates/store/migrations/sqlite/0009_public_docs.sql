-- What Quota's public documentation promises (SPEC §14, issue 16).
--
-- 1. An account's profile, as GET/PATCH /account show and set it (and /oauth/userinfo's
--    `name` and `picture`): a display name, an avatar URL, and free-form JSON metadata.
ALTER TABLE users ADD COLUMN name TEXT;
ALTER TABLE users ADD COLUMN avatar_url TEXT;
ALTER TABLE users ADD COLUMN user_metadata TEXT NOT NULL DEFAULT '{}';

-- 2. A key may leave the separate `event: quota_usage` out of its /v1/messages streams (strict
--    Anthropic stream parsers reject unknown event types); `quota` is on the final
--    `message_delta` either way.
ALTER TABLE api_keys ADD COLUMN quota_usage_event BOOLEAN NOT NULL DEFAULT TRUE;

-- 3. GET /v1/me sums what a wallet paid over 30 days, by model, in the database.
CREATE INDEX usage_records_payer ON usage_records(payer_account, created_at);
