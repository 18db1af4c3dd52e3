-- The journal: one row per transition written incrementally (IncrementalSagaRepository) or
-- carrying lifecycle events (the outbox). A saga's document is its `state`, written whole at
-- version `snapshot_version`, with the `patch` of each journal row of a later version applied
-- in order (saga_orchestrator.serialization.decode_context). A transition's write changes only
-- the small columns before `state` and appends its row, so that the row's new version shares
-- all of `state` with the old one (PostgreSQL then logs only the bytes that differ).
-- `events` holds the transition's events (compact, see adapters/postgres/_journal.py),
-- `sent_at` when the outbox relay had published them all (set at once when there are none to
-- send), `sent_mask` which of them it has (bit i: the row's event i); the relay reads the rows
-- not yet sent, in `id` order.
ALTER TABLE sagas ADD COLUMN snapshot_version bigint;
UPDATE sagas SET snapshot_version = version;
ALTER TABLE sagas ALTER COLUMN snapshot_version SET NOT NULL;

CREATE TABLE saga_journal (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    saga_id     uuid NOT NULL,
    version     bigint NOT NULL,
    patch       text,
    occurred_at timestamptz,
    events      text,
    event_count smallint NOT NULL,
    sent_at     timestamptz,
    sent_mask   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (saga_id, version)
);

CREATE INDEX saga_journal_unsent ON saga_journal (id) WHERE sent_at IS NULL;
-- Purging: the rows whose events were sent (rows without events are not purged this way: a
-- whole write of their saga deletes them).
CREATE INDEX saga_journal_sent ON saga_journal (sent_at)
    WHERE sent_at IS NOT NULL AND event_count > 0;

-- Step records kept apart by 0004 go back into their document, which is whole again.
UPDATE sagas AS s SET state = left(s.state, -2) || coalesce((SELECT
    string_agg(t.record, ',' ORDER BY t.idx) FROM saga_steps AS t WHERE t.saga_id = s.saga_id),
    '') || ']}', steps_in_rows = false
WHERE s.steps_in_rows;
DROP TABLE saga_steps;
ALTER TABLE sagas DROP COLUMN steps_in_rows;

-- Every stored lifecycle event, one row each, for people and tools reading the database
-- (the relay reads saga_journal itself): those of the journal and those written to
-- saga_outbox before it.
CREATE VIEW saga_events AS
SELECT j.saga_id,
       CASE WHEN jsonb_typeof(e.item) = 'array' THEN (e.item->>2)::bigint
            ELSE (e.item->>'sequence')::bigint END AS sequence,
       CASE WHEN jsonb_typeof(e.item) <> 'array' THEN e.item->>'type'
            WHEN jsonb_typeof(e.item->1) = 'number' THEN (ARRAY['saga.started',
                'saga.completed', 'saga.compensated', 'saga.failed', 'step.started',
                'step.completed', 'step.failed', 'compensation.started', 'step.compensated',
                'step.compensation_failed'])[(e.item->>1)::int + 1]
            ELSE e.item->>1 END AS type,
       CASE WHEN jsonb_typeof(e.item) = 'array' THEN e.item->>3 ELSE e.item->>'step' END AS step,
       j.occurred_at,
       j.sent_at
FROM saga_journal AS j
CROSS JOIN LATERAL jsonb_array_elements(coalesce(j.events, '[]')::jsonb) AS e(item)
UNION ALL
SELECT o.saga_id, o.sequence, o.event::jsonb->>'type', o.event::jsonb->>'step',
       (o.event::jsonb->>'occurred_at')::timestamptz, o.sent_at
FROM saga_outbox AS o;

-- Room in each page for the row's next versions: a transition's write then stays in the page
-- (a HOT update, which logs only the changed bytes and adds no index entries) even with many
-- sagas in flight side by side. New rows fill pages only half, so the table takes about twice
-- the space (bench/engine.py, 64 in flight: 6.1 KB of WAL per saga, 13.4 KB without this).
ALTER TABLE sagas SET (fillfactor = 50);
