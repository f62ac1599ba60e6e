-- A tenant's recorded consent to load its events into another region's accounts
-- (tidegate.transfers). Expand-only: a new table (mirrored in schema_sqlite.sql).
CREATE TABLE transfer_consents (
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    region         TEXT NOT NULL,
    reference      TEXT NOT NULL,
    recorded_by    TEXT NOT NULL,
    recorded_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, region)
);
