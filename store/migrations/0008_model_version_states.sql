-- A version's life in the registry: validating (an upload being checked), ready, failed (with the reason)
-- or retired (deleted; an import never brings it back). `loaded` = 0 keeps a ready version out of the
-- engine across restarts until it is loaded again.
ALTER TABLE model_versions ADD COLUMN state TEXT NOT NULL DEFAULT 'ready';
ALTER TABLE model_versions ADD COLUMN reason TEXT;
ALTER TABLE model_versions ADD COLUMN loaded BIGINT NOT NULL DEFAULT 1;
