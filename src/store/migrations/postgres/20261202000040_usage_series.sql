-- Usage over time: per key, the requests of each outcome in buckets of a minute
-- (step 60, kept 48 hours) and of an hour (step 3600, kept 90 days), added to by the
-- batched usage recorder and pruned past their retention as it writes.
CREATE TABLE api_key_usage (
    key_id       TEXT    NOT NULL,
    step         BIGINT NOT NULL,             -- the bucket's width in seconds: 60 or 3600
    at           BIGINT NOT NULL,             -- the bucket's start, Unix time in nanoseconds, UTC
    allowed      BIGINT NOT NULL DEFAULT 0,
    rate_limited BIGINT NOT NULL DEFAULT 0,
    forbidden    BIGINT NOT NULL DEFAULT 0,
    unauthorized BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, step, at)
);
CREATE INDEX api_key_usage_by_at ON api_key_usage (step, at);
