-- PostgreSQL: the same as migrations/sqlite/0005_usage_events.sql.
-- The `usage.completed` event a usage record owes its developer's webhook endpoints, until the
-- webhook worker writes it to `events` (with the record as its data) and clears this. Written
-- with the charge, in the same transaction: the outbox entry without a second copy of the
-- record on the request path.
ALTER TABLE usage_records ADD COLUMN pending_event TEXT;
CREATE INDEX usage_records_pending_event ON usage_records(created_at) WHERE pending_event IS NOT NULL;
