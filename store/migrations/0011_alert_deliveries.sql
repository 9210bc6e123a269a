-- The webhook outbox: one row per event and webhook, written with the event, sent by the dispatcher and
-- retried on its schedule. The body is stored once as sent, so every retry signs the same bytes.
CREATE TABLE alert_deliveries (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    event_id         TEXT NOT NULL,
    url              TEXT NOT NULL,
    secret           TEXT NOT NULL,
    body             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         BIGINT NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    last_status_code BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    delivered_at     BIGINT
);

CREATE INDEX alert_deliveries_due ON alert_deliveries (status, next_attempt_at);
CREATE INDEX alert_deliveries_by_event ON alert_deliveries (organization_id, event_id);
