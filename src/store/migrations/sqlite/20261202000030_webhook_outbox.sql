-- The webhook outbox: one row for every event owed to a webhook receiver, written in the
-- same transaction as the change it announces. The deliverer's state (attempts, the next
-- attempt, the last answer) lives here too, so that a restart resumes where it stopped.
-- Rows are pruned after a retention window, delivered or not. Events hold ids and public
-- facts, never a key or its hash.
CREATE TABLE api_key_events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,      -- the message id, msg_…
    event_type      TEXT    NOT NULL,             -- key.created, key.revoked, …
    key_id          TEXT    NOT NULL,
    data            TEXT    NOT NULL,             -- the body's `data`, JSON
    at              INTEGER NOT NULL,             -- Unix time in nanoseconds, UTC
    state           TEXT    NOT NULL DEFAULT 'pending', -- pending, delivered, failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,             -- due then (or leased until then)
    last_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    delivered_at    INTEGER
);
CREATE INDEX api_key_events_due ON api_key_events (state, next_attempt_at);
CREATE INDEX api_key_events_by_at ON api_key_events (at);

-- The expiry time last announced as `key.expiring` and as `key.expired`: each is
-- announced once per expiry time. Keys already expired when this runs are not announced.
ALTER TABLE api_keys ADD COLUMN expiring_announced_for INTEGER;
ALTER TABLE api_keys ADD COLUMN expired_announced_for INTEGER;
UPDATE api_keys SET expired_announced_for = expires_at
    WHERE expires_at IS NOT NULL
      AND expires_at <= CAST(strftime('%s', 'now') AS INTEGER) * 1000000000;
CREATE INDEX api_keys_by_expiry ON api_keys (expires_at);
