-- Transactional outbox: a transition's lifecycle events, written in its transaction
-- (`event` is the JSON of saga_orchestrator.events.encode_event). SQLite has one writer at a
-- time, so `id` follows commit order, and within a saga it follows `sequence`.
-- AUTOINCREMENT: an id is never reused, even after the newest rows were purged.
CREATE TABLE saga_outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id    TEXT NOT NULL,
    sequence   INTEGER NOT NULL,
    event      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sent_at    TEXT
);

-- The relay reads only the rows not yet sent, however many sent ones are kept.
CREATE INDEX saga_outbox_unsent ON saga_outbox (id) WHERE sent_at IS NULL;

-- Purging old sent rows does not scan the unsent ones.
CREATE INDEX saga_outbox_sent ON saga_outbox (sent_at) WHERE sent_at IS NOT NULL;
