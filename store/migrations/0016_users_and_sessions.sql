-- People who sign in, and their sessions' refresh tokens.
-- A user belongs to one organization; an email is one account on the platform (login is by email alone).
-- password_hash is an argon2id PHC string (NULL until a password is set); token_version moves on when a
-- role, a password or the user's standing changes, which ends the access tokens issued before.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    email TEXT NOT NULL,
    name TEXT,
    role TEXT NOT NULL,
    active BIGINT NOT NULL,
    password_hash TEXT,
    token_version BIGINT NOT NULL,
    last_login_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_email ON users (email);
CREATE INDEX users_organization ON users (organization_id, created_at);

-- Refresh tokens, as SHA-256 hashes, rotated on each use: a family is one sign-in's chain of tokens; a
-- token spent twice revokes its family.
CREATE TABLE refresh_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    family_id TEXT NOT NULL,
    token_sha256 TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX refresh_tokens_hash ON refresh_tokens (token_sha256);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
