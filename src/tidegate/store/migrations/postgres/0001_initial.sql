-- Tidegate store schema, PostgreSQL dialect: the tables, columns and indexes of
-- schema_sqlite.sql. Times are BIGINT milliseconds, blobs BYTEA. Ids and keys are
-- TEXT COLLATE "C" so they sort by byte, as SQLite compares them: cursor pagination
-- (`id < after_id ORDER BY id DESC`) pages the same on both engines whatever the
-- database's locale.
CREATE TABLE tenants (
    id            TEXT COLLATE "C" PRIMARY KEY,
    name          TEXT NOT NULL,
    region        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE sources (
    id             TEXT COLLATE "C" PRIMARY KEY,
    tenant_id      TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    name           TEXT NOT NULL,
    write_key_hash TEXT NOT NULL UNIQUE,
    created_at_ms  BIGINT NOT NULL,
    revoked_at_ms  BIGINT
);
CREATE TABLE api_keys (
    key_hash      TEXT PRIMARY KEY,
    tenant_id     TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    name          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
CREATE TABLE data_keys (
    tenant_id     TEXT COLLATE "C" NOT NULL,
    version       INTEGER NOT NULL,
    wrapped       BYTEA NOT NULL,
    key_ring_id   TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);
CREATE TABLE destinations (
    id              TEXT COLLATE "C" PRIMARY KEY,
    tenant_id       TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    name            TEXT NOT NULL,
    url             TEXT NOT NULL,
    secret_ct       BYTEA NOT NULL,
    filter          TEXT,
    transform       TEXT,
    retry_schedule  TEXT,
    retry_4xx       BOOLEAN NOT NULL DEFAULT TRUE,
    timeout_s       DOUBLE PRECISION,
    status          TEXT NOT NULL,
    disabled_reason TEXT,
    created_at_ms   BIGINT NOT NULL
);
CREATE INDEX destinations_tenant ON destinations (tenant_id, status);
CREATE TABLE events (
    tenant_id      TEXT COLLATE "C" NOT NULL,
    id             TEXT COLLATE "C" NOT NULL,
    source_id      TEXT NOT NULL,
    kind           TEXT NOT NULL,
    type           TEXT NOT NULL,
    name_index     BYTEA NOT NULL,
    dedupe_index   BYTEA NOT NULL,
    received_at_ms BIGINT NOT NULL,
    ciphertext     BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX events_name ON events (tenant_id, name_index, id);
CREATE INDEX events_received ON events (tenant_id, received_at_ms);
CREATE TABLE dedupe (
    tenant_id     TEXT COLLATE "C" NOT NULL,
    dedupe_index  BYTEA NOT NULL,
    event_id      TEXT COLLATE "C" NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, dedupe_index)
);
CREATE TABLE deliveries (
    id                 TEXT COLLATE "C" PRIMARY KEY,
    tenant_id          TEXT COLLATE "C" NOT NULL,
    event_id           TEXT COLLATE "C" NOT NULL,
    destination_id     TEXT COLLATE "C" NOT NULL,
    status             TEXT NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT,
    lease_until_ms     BIGINT,
    created_at_ms      BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    last_error         TEXT,
    replay_of          TEXT COLLATE "C"
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at_ms) WHERE status = 'pending';
CREATE INDEX deliveries_event ON deliveries (tenant_id, event_id);
CREATE INDEX deliveries_destination ON deliveries (tenant_id, destination_id, status, id);
CREATE TABLE attempts (
    id            TEXT COLLATE "C" PRIMARY KEY,
    delivery_id   TEXT COLLATE "C" NOT NULL,
    tenant_id     TEXT COLLATE "C" NOT NULL,
    started_at_ms BIGINT NOT NULL,
    duration_ms   DOUBLE PRECISION NOT NULL,
    outcome       TEXT NOT NULL,
    status_code   INTEGER,
    error         TEXT
);
CREATE INDEX attempts_delivery ON attempts (tenant_id, delivery_id);
CREATE TABLE usage (
    tenant_id TEXT COLLATE "C" NOT NULL,
    hour_ms   BIGINT NOT NULL,
    meter     TEXT COLLATE "C" NOT NULL,
    value     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, hour_ms, meter)
);
