-- A batch job's chunks, in the store so that any replica runs any chunk and answers any job's results.
-- The submitting replica writes each chunk's input rows (CSV records, no header) before the job row, so a
-- chunk whose job does not exist is never claimed (and the janitor removes it, an intake that died).
-- A replica claims a chunk (pending, or running under a lease that has run out) and holds it under
-- `token` until `lease_until` (ms, on the database's clock), renewing it while it computes; the commit
-- writes the results and moves the job on in one transaction, only while the token is still the chunk's:
-- each chunk commits once.
-- `attempt` is the job's run the claim belongs to; `claims` counts the claims (above 1: taken over).
CREATE TABLE batch_chunks (
    job_id          TEXT NOT NULL,
    idx             BIGINT NOT NULL,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    first_row       BIGINT NOT NULL,
    row_count       BIGINT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dropped')),
    holder          TEXT,
    token           BIGINT,
    lease_until     BIGINT,
    attempt         BIGINT NOT NULL,
    claims          BIGINT NOT NULL,
    claimed_at      BIGINT,
    failed          BIGINT,
    input           BYTEA,
    result          BYTEA,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (job_id, idx)
);

-- What a claim looks through: the chunks not yet done, and per organization its running chunks and its
-- latest claim (fairness).
CREATE INDEX batch_chunks_open ON batch_chunks (state, job_id, idx) WHERE state IN ('pending', 'running');
CREATE INDEX batch_chunks_by_organization ON batch_chunks (organization_id, state);
CREATE INDEX batch_chunks_by_claim ON batch_chunks (organization_id, claimed_at);

-- A price job's CSV header (a JSON array of names) and a raw job's outputs (JSON), which each chunk needs
-- wherever it runs.
ALTER TABLE batch_jobs ADD COLUMN input_header TEXT;
ALTER TABLE batch_jobs ADD COLUMN outputs TEXT;
CREATE INDEX batch_jobs_by_finish ON batch_jobs (finished_at);
