-- Live profiles of monitored model versions: each replica's counts per version and bucket of time (the
-- start of the bucket, Unix seconds), kept as the JSON of the feature crate's `Live`. A replica rewrites
-- its row of the current bucket as it counts; a window is the merge of every replica's rows of its buckets.
CREATE TABLE monitor_counts (
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    replica TEXT NOT NULL,
    rows_counted BIGINT NOT NULL,
    counts TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (model, version, bucket, replica)
);
CREATE INDEX monitor_counts_bucket ON monitor_counts (bucket);
