-- Networks a key may be used from: a JSON array of CIDRs; empty, anywhere.
ALTER TABLE api_keys ADD COLUMN allowed_ips TEXT NOT NULL DEFAULT '[]';
