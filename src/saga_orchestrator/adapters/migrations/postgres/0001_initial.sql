-- One row per saga. `state` holds the whole context as JSON (saga_orchestrator.serialization),
-- kept as text: jsonb would reorder keys and normalize the document, and the repository must
-- return exactly the string it was given. The other columns repeat what queries filter on.
CREATE TABLE sagas (
    saga_id        uuid PRIMARY KEY,
    saga_type      text NOT NULL,
    correlation_id text,
    status         text NOT NULL,
    version        bigint NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    state          text NOT NULL,
    -- Creation order ("oldest first"): timestamps can tie or come from skewed clocks.
    created_seq    bigint GENERATED ALWAYS AS IDENTITY
);

CREATE UNIQUE INDEX sagas_by_created_seq ON sagas (created_seq);

-- get_by_correlation_id: the latest saga with this correlation id.
CREATE INDEX sagas_by_correlation_id ON sagas (correlation_id, created_seq);

-- Recovery scans only the sagas still in flight, however many finished ones are stored.
CREATE INDEX sagas_active ON sagas (created_seq)
    WHERE status IN ('pending', 'running', 'compensating');

-- Failed sagas need an operator: find them (and count them for the saga_states gauge)
-- without scanning every finished saga.
CREATE INDEX sagas_failed ON sagas (created_seq) WHERE status = 'failed';

CREATE TABLE idempotency_keys (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
