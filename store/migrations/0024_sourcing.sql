-- Sourcing: requests for quotation, the suppliers' quotes (each line benchmarked when it arrived) and the
-- awards. An RFQ's lines and invitations are JSON: they are written with the RFQ and read with it, never
-- queried apart. `version` fences every change of an RFQ (state, awards): an update names the version it
-- read, so two writers cannot both act on the same state.
CREATE TABLE rfqs (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    title           TEXT NOT NULL,
    currency        TEXT NOT NULL,
    incoterm        TEXT,
    named_place     TEXT,
    notes           TEXT,
    -- Quotes are taken until then (milliseconds since the epoch).
    deadline        BIGINT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN
                        ('draft', 'open', 'closed', 'partially_awarded', 'awarded', 'cancelled')),
    -- [{"id", "material_id", "quantity", "unit", "needed_by"}]
    lines           TEXT NOT NULL,
    -- ["supplier id", ...]
    suppliers       TEXT NOT NULL,
    version         BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    opened_at       BIGINT,
    closed_at       BIGINT,
    decided_at      BIGINT
);
CREATE INDEX rfqs_by_org_status ON rfqs (organization_id, status, deadline);
CREATE INDEX rfqs_by_org_created ON rfqs (organization_id, created_at, id);

CREATE TABLE quotes (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    rfq_id          TEXT NOT NULL REFERENCES rfqs (id) ON DELETE CASCADE,
    supplier_id     TEXT NOT NULL REFERENCES suppliers (id),
    -- A supplier's later quote supersedes its earlier one: 1, 2, ...
    revision        BIGINT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('submitted', 'superseded')),
    currency        TEXT NOT NULL,
    incoterm        TEXT,
    valid_until     TEXT,
    submitted_at    BIGINT NOT NULL,
    -- The lines with their benchmarks and deal scores, as JSON.
    lines           TEXT NOT NULL,
    UNIQUE (rfq_id, supplier_id, revision)
);
CREATE INDEX quotes_by_rfq ON quotes (organization_id, rfq_id, status);

CREATE TABLE rfq_awards (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    rfq_id          TEXT NOT NULL REFERENCES rfqs (id) ON DELETE CASCADE,
    line_id         TEXT NOT NULL,
    quote_id        TEXT NOT NULL REFERENCES quotes (id),
    supplier_id     TEXT NOT NULL,
    quantity        DOUBLE PRECISION NOT NULL,
    unit_price      DOUBLE PRECISION NOT NULL,
    awarded_at      BIGINT NOT NULL
);
CREATE INDEX rfq_awards_by_rfq ON rfq_awards (organization_id, rfq_id);
