-- Portable SQL: runs unchanged on SQLite and PostgreSQL (see store/src/lib.rs for the rules).
-- Every row belongs to an organization; every lookup and index starts with it.
CREATE TABLE materials (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    code             TEXT NOT NULL,
    name             TEXT NOT NULL,
    category         TEXT NOT NULL,
    unit             TEXT NOT NULL,
    specifications   TEXT NOT NULL,
    list_price       DOUBLE PRECISION,
    status           TEXT NOT NULL CHECK (status IN ('active', 'inactive', 'discontinued')),
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    UNIQUE (organization_id, code)
);

CREATE INDEX materials_by_category ON materials (organization_id, category);

CREATE TABLE suppliers (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    code             TEXT NOT NULL,
    name             TEXT NOT NULL,
    country          TEXT NOT NULL,
    reliability      DOUBLE PRECISION NOT NULL CHECK (reliability >= 0 AND reliability <= 1),
    status           TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    UNIQUE (organization_id, code)
);

-- Observations refer to their material and supplier; a material or supplier with observations cannot be
-- deleted (409) until they are.
CREATE TABLE prices (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    material_id      TEXT NOT NULL REFERENCES materials (id),
    supplier_id      TEXT REFERENCES suppliers (id),
    observed_at      BIGINT NOT NULL,
    price            DOUBLE PRECISION NOT NULL CHECK (price > 0),
    currency         TEXT NOT NULL,
    quantity         DOUBLE PRECISION CHECK (quantity > 0),
    price_type       TEXT NOT NULL CHECK (price_type IN ('quote', 'contract', 'market', 'invoice')),
    source           TEXT,
    created_at       BIGINT NOT NULL
);

CREATE INDEX prices_by_material_time ON prices (organization_id, material_id, observed_at DESC);
CREATE INDEX prices_by_supplier_time ON prices (organization_id, supplier_id, observed_at DESC);
CREATE INDEX prices_by_time ON prices (organization_id, observed_at DESC);

-- 1 for the organization created at first start: its admins may create and list organizations.
ALTER TABLE organizations ADD COLUMN platform BIGINT NOT NULL DEFAULT 0;
