-- Housekeeping's range deletes by age, indexed: without these, expiring dedupe keys and
-- finding events past retention scanned whole tables once a minute (at 10M events a day
-- the dedupe table holds a day of keys: 10M rows). Expand-only: new indexes (mirrored in
-- schema_sqlite.sql).
CREATE INDEX dedupe_expiry ON dedupe (expires_at_ms);
CREATE INDEX events_age ON events (received_at_ms);
