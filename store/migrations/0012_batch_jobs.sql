-- Batch prediction jobs. The input lives in the data directory of the node that took it (`node`), cut into
-- chunks at submit (`chunks`: JSON [[first_row, rows, byte_start, byte_end], ...]); chunks run in order and
-- each commits by renaming its result file, then one UPDATE that moves `chunks_done` on by one, so
-- `processed_rows` counts committed rows only and a restarted node resumes at `chunks_done`.
CREATE TABLE batch_jobs (
    id                  TEXT PRIMARY KEY,
    organization_id     TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    node                TEXT NOT NULL,
    model               TEXT NOT NULL,
    model_version       BIGINT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    input_format        TEXT NOT NULL,
    input_bytes         BIGINT NOT NULL,
    total_rows          BIGINT NOT NULL,
    processed_rows      BIGINT NOT NULL,
    failed_rows         BIGINT NOT NULL,
    chunks              TEXT NOT NULL,
    chunks_total        BIGINT NOT NULL,
    chunks_done         BIGINT NOT NULL,
    attempts            BIGINT NOT NULL,
    error_code          TEXT,
    error_message       TEXT,
    created_at          BIGINT NOT NULL,
    started_at          BIGINT,
    finished_at         BIGINT,
    cancel_requested_at BIGINT
);

CREATE INDEX batch_jobs_by_organization ON batch_jobs (organization_id, id);
CREATE INDEX batch_jobs_by_node ON batch_jobs (node, state);
