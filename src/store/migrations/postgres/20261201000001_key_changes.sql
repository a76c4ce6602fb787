-- The change log: one row for every change that can make a cached record wrong, written
-- in the same transaction as the change. Readers replay it from the last sequence they
-- applied; the store serializes its writers on an advisory lock, so that sequences
-- become visible in order.
CREATE TABLE api_key_changes (
    seq     BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT  NOT NULL, -- Unix time in nanoseconds, UTC
    key_id  TEXT    NOT NULL,
    hash    BYTEA   NOT NULL,
    kind    TEXT    NOT NULL
);
CREATE INDEX api_key_changes_by_at ON api_key_changes (at);

-- The newest sequence pruned from the log: a reader behind it missed changes.
CREATE TABLE api_key_changes_pruned (
    one      INTEGER PRIMARY KEY CHECK (one = 1),
    through  BIGINT  NOT NULL
);
INSERT INTO api_key_changes_pruned (one, through) VALUES (1, 0);
