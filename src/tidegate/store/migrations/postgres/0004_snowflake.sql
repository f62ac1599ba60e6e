-- Snowflake destinations: a destination's kind and its settings (JSON, no secrets; the
-- private key is secret_ct). Expand-only (mirrored in schema_sqlite.sql).
ALTER TABLE destinations ADD COLUMN kind TEXT NOT NULL DEFAULT 'webhook';
ALTER TABLE destinations ADD COLUMN config TEXT;
