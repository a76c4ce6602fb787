-- A `leaked` audit entry says where the key was found: the URL and the kind of place
-- (never the key). Older entries have neither: NULL.
ALTER TABLE api_key_audit ADD COLUMN url TEXT;
ALTER TABLE api_key_audit ADD COLUMN source TEXT;
