-- SPEC §4.3(9): usage records and charges are keyed by Quota's own `req_…` id; the id a client
-- sent in `x-request-id` is kept here, for the client's own correlation, never as a key.
ALTER TABLE usage_records ADD COLUMN client_request_id TEXT;
