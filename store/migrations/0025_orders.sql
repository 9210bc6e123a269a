-- Purchase orders to suppliers (by hand, imported, or from an RFQ's awards) and the deliveries against
-- their lines. A line's promised date and a delivery's date are days (YYYY-MM-DD).
CREATE TABLE orders (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    supplier_id     TEXT NOT NULL REFERENCES suppliers (id),
    -- The RFQ whose awards it was made from, if any.
    rfq_id          TEXT,
    reference       TEXT,
    currency        TEXT NOT NULL,
    ordered_on      TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('open', 'delivered', 'cancelled')),
    -- [{"id", "material_id", "quantity", "unit_price", "promised_date"}]
    lines           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX orders_by_supplier ON orders (organization_id, supplier_id, ordered_on);
CREATE INDEX orders_by_date ON orders (organization_id, ordered_on, id);
CREATE UNIQUE INDEX orders_by_reference ON orders (organization_id, reference);

CREATE TABLE deliveries (
    id                TEXT PRIMARY KEY,
    organization_id   TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    order_id          TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_id           TEXT NOT NULL,
    supplier_id       TEXT NOT NULL,
    delivered_on      TEXT NOT NULL,
    quantity          DOUBLE PRECISION NOT NULL,
    rejected_quantity DOUBLE PRECISION NOT NULL,
    created_at        BIGINT NOT NULL
);
CREATE INDEX deliveries_by_order ON deliveries (organization_id, order_id);
CREATE INDEX deliveries_by_supplier ON deliveries (organization_id, supplier_id, delivered_on);
