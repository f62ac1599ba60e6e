-- Tidegate store schema, SQLite dialect. Applied by migrations in order; keep expand/contract.
CREATE TABLE IF NOT EXISTS tenants (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    region        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants(id),
    name           TEXT NOT NULL,
    write_key_hash TEXT NOT NULL UNIQUE,
    created_at_ms  INTEGER NOT NULL,
    revoked_at_ms  INTEGER,
    -- The key a rotation replaced, accepted until prev_key_expires_at_ms (the overlap).
    prev_write_key_hash    TEXT,
    prev_key_expires_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS sources_prev_key ON sources (prev_write_key_hash)
    WHERE prev_write_key_hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS sources_tenant ON sources (tenant_id, id);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash      TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    name          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS data_keys (
    tenant_id     TEXT NOT NULL,
    version       INTEGER NOT NULL,
    wrapped       BLOB NOT NULL,
    key_ring_id   TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, version)
);
CREATE TABLE IF NOT EXISTS destinations (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    name            TEXT NOT NULL,
    url             TEXT NOT NULL,
    secret_ct       BLOB NOT NULL,
    filter          TEXT,
    transform       TEXT,
    retry_schedule  TEXT,
    retry_4xx       INTEGER NOT NULL DEFAULT 1,
    timeout_s       REAL,
    status          TEXT NOT NULL,
    disabled_reason TEXT,
    created_at_ms   INTEGER NOT NULL,
    -- The secret a rotation replaced (encrypted as secret_ct), signing until the expiry.
    prev_secret_ct            BLOB,
    prev_secret_expires_at_ms INTEGER,
    -- "webhook" or "snowflake"; config: the kind's settings as JSON (no secrets).
    kind            TEXT NOT NULL DEFAULT 'webhook',
    config          TEXT
);
CREATE INDEX IF NOT EXISTS destinations_tenant ON destinations (tenant_id, status);
CREATE TABLE IF NOT EXISTS events (
    tenant_id      TEXT NOT NULL,
    id             TEXT NOT NULL,
    source_id      TEXT NOT NULL,
    kind           TEXT NOT NULL,
    type           TEXT NOT NULL,
    name_index     BLOB NOT NULL,
    dedupe_index   BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    ciphertext     BLOB NOT NULL,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_name ON events (tenant_id, name_index, id);
CREATE INDEX IF NOT EXISTS events_received ON events (tenant_id, received_at_ms);
CREATE TABLE IF NOT EXISTS dedupe (
    tenant_id     TEXT NOT NULL,
    dedupe_index  BLOB NOT NULL,
    event_id      TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, dedupe_index)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_expiry ON dedupe (expires_at_ms);
-- Dedupe claims made since the claims file's last flush (store/sqlite/claims.py), in
-- routing order; `dedupe` above is where releases before it kept claims.
CREATE TABLE IF NOT EXISTS dedupe_journal (
    seq           INTEGER PRIMARY KEY,
    claim         BLOB    NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_age ON events (received_at_ms);
CREATE TABLE IF NOT EXISTS deliveries (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    destination_id     TEXT NOT NULL,
    status             TEXT NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER,
    lease_until_ms     INTEGER,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    last_error         TEXT,
    replay_of          TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at_ms) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (tenant_id, event_id);
CREATE INDEX IF NOT EXISTS deliveries_destination ON deliveries (tenant_id, destination_id, status, id);
CREATE TABLE IF NOT EXISTS attempts (
    id            TEXT PRIMARY KEY,
    delivery_id   TEXT NOT NULL,
    tenant_id     TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    duration_ms   REAL NOT NULL,
    outcome       TEXT NOT NULL,
    status_code   INTEGER,
    error         TEXT
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (tenant_id, delivery_id);
CREATE TABLE IF NOT EXISTS usage (
    tenant_id TEXT NOT NULL,
    hour_ms   INTEGER NOT NULL,
    meter     TEXT NOT NULL,
    value     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, hour_ms, meter)
) WITHOUT ROWID;
-- The audit chain: its own file, store/sqlite/audit.py (older files keep theirs here).
CREATE TABLE IF NOT EXISTS transfer_consents (
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    region         TEXT NOT NULL,
    reference      TEXT NOT NULL,
    recorded_by    TEXT NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, region)
);
