-- A client's Idempotency-Key for a batch job: a retried submit with the same key gets the first job back
-- instead of making a second. Unique per organization; jobs submitted without one have NULL.
ALTER TABLE batch_jobs ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX batch_jobs_by_key ON batch_jobs (organization_id, idempotency_key);
-- The janitor looks for ended jobs of a node by when they ended.
CREATE INDEX batch_jobs_by_end ON batch_jobs (node, finished_at);
