-- Keys: only the SHA-256 hash and the public start of each key, never the key.
CREATE TABLE api_keys (
    id           TEXT    PRIMARY KEY,
    hash         BYTEA   NOT NULL UNIQUE,
    start        TEXT    NOT NULL,
    consumer     TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    scopes       TEXT    NOT NULL, -- JSON array of scope strings
    created_at   BIGINT  NOT NULL, -- Unix time in nanoseconds, UTC
    expires_at   BIGINT,
    revoked_at   BIGINT,
    rate_limits  TEXT    NOT NULL, -- JSON array of policies
    metadata     TEXT    NOT NULL, -- JSON object of strings
    requests     BIGINT  NOT NULL DEFAULT 0,
    rejected     BIGINT  NOT NULL DEFAULT 0,
    last_used_at BIGINT
);
CREATE INDEX api_keys_by_consumer ON api_keys (consumer, created_at, id);
CREATE INDEX api_keys_by_created ON api_keys (created_at, id);

CREATE TABLE api_key_audit (
    seq     BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT  NOT NULL,
    event   TEXT    NOT NULL,
    key_id  TEXT    NOT NULL,
    actor   TEXT    NOT NULL,
    detail  TEXT
);
CREATE INDEX api_key_audit_by_key ON api_key_audit (key_id, at, seq);
