-- Keys that can be narrowed and that end: the scopes a key may use (comma-separated; NULL: every scope its
-- role allows), when it stops working (NULL: never, for operator keys), and when it was last used (written
-- at most once a minute per key, off the request path).
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
