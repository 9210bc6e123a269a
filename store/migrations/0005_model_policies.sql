-- Which version of each served model answers requests that name none, and the one before it (for
-- rollback). Models are the platform's, shared by every organization.
CREATE TABLE model_policies (
    name              TEXT PRIMARY KEY,
    active_version    BIGINT NOT NULL,
    previous_version  BIGINT,
    updated_at        BIGINT NOT NULL
);
