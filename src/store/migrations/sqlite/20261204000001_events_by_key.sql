-- A key's webhook events, newest first (the dashboard shows them in the key's audit log).
CREATE INDEX api_key_events_by_key ON api_key_events (key_id, seq);
