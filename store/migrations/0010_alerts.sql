-- Price alerting: rules, the events they open, and the per-subject record that enforces the cooldown.
CREATE TABLE alert_rules (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    -- material | category | supplier | all; scope_value is NULL for all.
    scope_kind       TEXT NOT NULL CHECK (scope_kind IN ('material', 'category', 'supplier', 'all')),
    scope_value      TEXT,
    -- The condition as JSON ({"type": ..., parameters}), the channels as a JSON array.
    condition        TEXT NOT NULL,
    channels         TEXT NOT NULL,
    severity         TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high')),
    cooldown_seconds BIGINT NOT NULL CHECK (cooldown_seconds >= 0),
    enabled          BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    UNIQUE (organization_id, name)
);

CREATE TABLE alert_events (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    rule_id          TEXT NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    -- What the event is about: material_id|supplier_id (supplier empty when none).
    subject          TEXT NOT NULL,
    material_id      TEXT,
    supplier_id      TEXT,
    -- The observation that opened it (NULL for a scheduled forecast rule).
    price_id         TEXT,
    value            DOUBLE PRECISION NOT NULL,
    threshold        DOUBLE PRECISION NOT NULL,
    message          TEXT NOT NULL,
    severity         TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high')),
    status           TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    -- Breaches of the same rule and subject inside the cooldown fold into the event that opened it.
    breach_count     BIGINT NOT NULL,
    last_value       DOUBLE PRECISION NOT NULL,
    opened_at        BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    acknowledged_at  BIGINT,
    resolved_at      BIGINT
);

CREATE INDEX alert_events_by_time ON alert_events (organization_id, opened_at DESC, id DESC);
CREATE INDEX alert_events_by_rule ON alert_events (organization_id, rule_id, opened_at DESC);

-- The latest event of each rule and subject: a new one opens only once the cooldown since it has passed,
-- decided by one conditional upsert, so replicas sharing the database open one event, not one each.
CREATE TABLE alert_subjects (
    rule_id          TEXT NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    subject          TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    opened_at        BIGINT NOT NULL,
    PRIMARY KEY (rule_id, subject)
);
