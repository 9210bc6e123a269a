-- Who did what to what, when, with the state before and after (JSON text), per organization.
CREATE TABLE audit_events (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    actor_key_id     TEXT NOT NULL,
    action           TEXT NOT NULL,
    target_type      TEXT NOT NULL,
    target_id        TEXT NOT NULL,
    before_state     TEXT,
    after_state      TEXT,
    at               BIGINT NOT NULL
);

CREATE INDEX audit_events_by_time ON audit_events (organization_id, at DESC, id DESC);
