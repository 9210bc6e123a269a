-- Periodic work done once per period across replicas (the forecast rules' rounds, audit retention): the
-- replica whose insert of (task, period) succeeds runs it; the others see the row and skip.
CREATE TABLE fleet_runs (
    task TEXT NOT NULL,
    slot BIGINT NOT NULL,
    holder TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (task, slot)
);
