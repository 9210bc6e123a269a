-- Portable SQL: runs unchanged on SQLite and PostgreSQL (see store/src/lib.rs for the rules).
CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    prefix           TEXT NOT NULL UNIQUE,
    secret_sha256    TEXT NOT NULL,
    name             TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('viewer', 'analyst', 'admin')),
    created_at       BIGINT NOT NULL
);

CREATE INDEX api_keys_by_organization ON api_keys (organization_id);
