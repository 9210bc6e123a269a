-- A sample of the price predictions answered (--monitor-log-sample), kept to be checked against the prices
-- observed afterwards: realized accuracy per model version. Supplier names and prices stay inside the
-- organization's own rows; rows older than --monitor-log-retention-days are deleted.
CREATE TABLE prediction_log (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    material_id TEXT NOT NULL,
    supplier_id TEXT,
    as_of_day BIGINT NOT NULL,
    quantity DOUBLE PRECISION NOT NULL,
    predicted DOUBLE PRECISION NOT NULL,
    lower_bound DOUBLE PRECISION NOT NULL,
    upper_bound DOUBLE PRECISION NOT NULL,
    level DOUBLE PRECISION NOT NULL,
    inputs_digest TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX prediction_log_version_time ON prediction_log (model, version, created_at);
CREATE INDEX prediction_log_time ON prediction_log (created_at);
