-- The management API: write-key rotation with an overlap, destination secret rotation.
-- Expand-only: new nullable columns and indexes (mirrored in schema_sqlite.sql).
ALTER TABLE sources ADD COLUMN prev_write_key_hash TEXT;
ALTER TABLE sources ADD COLUMN prev_key_expires_at_ms BIGINT;
CREATE INDEX sources_prev_key ON sources (prev_write_key_hash)
    WHERE prev_write_key_hash IS NOT NULL;
CREATE INDEX sources_tenant ON sources (tenant_id, id);
ALTER TABLE destinations ADD COLUMN prev_secret_ct BYTEA;
ALTER TABLE destinations ADD COLUMN prev_secret_expires_at_ms BIGINT;
