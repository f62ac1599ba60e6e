-- The hash-chained audit log (see src/tidegate/security/audit.py). Expand-only.
CREATE TABLE audit (
    seq        BIGINT PRIMARY KEY,
    at_ms      BIGINT NOT NULL,
    tenant_id  TEXT COLLATE "C",
    actor      TEXT NOT NULL,
    client_id  TEXT,
    source_ip  TEXT,
    action     TEXT NOT NULL,
    resource   TEXT,
    outcome    TEXT NOT NULL,
    request_id TEXT,
    detail     TEXT,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_tenant ON audit (tenant_id, seq);
CREATE INDEX audit_time ON audit (at_ms);
CREATE TABLE audit_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
