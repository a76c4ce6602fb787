-- Deleted keys: a deleted key is revoked and gone from its id (listed no more, every
-- change refused as not found); its row stays, for the audit log and past usage.
ALTER TABLE api_keys ADD COLUMN deleted_at INTEGER; -- Unix time in nanoseconds, UTC
