-- The change feed: every change another replica must apply to what it keeps in memory (the active model,
-- the rule index, the price history, cached keys, users and catalogue entries), numbered in commit order.
-- `seq` is assigned as MAX(seq) + 1 under one lock held to the end of the writing transaction, so numbers
-- are gap-free and commit in order: a replica that read up to n never finds a later commit below n.
CREATE TABLE fleet_changes (
    seq BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    organization_id TEXT,
    entity TEXT NOT NULL,
    payload TEXT,
    origin TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX fleet_changes_at ON fleet_changes (at);
