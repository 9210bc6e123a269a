-- A key's own rate limits, as `CLASS=RATE` pairs (`predict=600/min,all=10000/h`); NULL: the server's default
-- for keys (--rate-limits-key).
ALTER TABLE api_keys ADD COLUMN rate_limits TEXT;
