-- One row per saga. `state` holds the whole context as JSON (saga_orchestrator.serialization);
-- the other columns repeat what queries filter on.
CREATE TABLE sagas (
    saga_id        TEXT PRIMARY KEY,
    saga_type      TEXT NOT NULL,
    correlation_id TEXT,
    status         TEXT NOT NULL,
    version        INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    state          TEXT NOT NULL
);

CREATE INDEX sagas_by_correlation_id ON sagas (correlation_id);

-- Recovery scans only the sagas still in flight, however many finished ones are stored.
CREATE INDEX sagas_active ON sagas (status)
    WHERE status IN ('pending', 'running', 'compensating');

CREATE TABLE idempotency_keys (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL
);
