-- Durable waits (wait_for_event, sleep_for). A saga parked at a wait step is in flight, leased
-- to nobody, with `run_after` at its timer or timeout ('9999-12-31' when only an event wakes
-- it): workers claim it when due, as any other; `waiting_for` names the event it waits for
-- (NULL otherwise). Events addressed to sagas are kept in `saga_inbox` until a wait step
-- consumes them (the consuming step records the event's id in the saga's state); storing the
-- event a parked saga waits for makes it due at once and notifies the workers.
ALTER TABLE sagas ADD COLUMN waiting_for text;

CREATE TABLE saga_inbox (
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    event_id    text PRIMARY KEY,
    saga_id     uuid NOT NULL,
    name        text NOT NULL,
    payload     text NOT NULL,
    received_at timestamptz NOT NULL
);

CREATE INDEX saga_inbox_by_saga ON saga_inbox (saga_id, seq);

-- The events view knows the new event type's code (step.waiting: 10).
CREATE OR REPLACE VIEW saga_events AS
SELECT j.saga_id,
       CASE WHEN jsonb_typeof(e.item) = 'array' THEN (e.item->>2)::bigint
            ELSE (e.item->>'sequence')::bigint END AS sequence,
       CASE WHEN jsonb_typeof(e.item) <> 'array' THEN e.item->>'type'
            WHEN jsonb_typeof(e.item->1) = 'number' THEN (ARRAY['saga.started',
                'saga.completed', 'saga.compensated', 'saga.failed', 'step.started',
                'step.completed', 'step.failed', 'compensation.started', 'step.compensated',
                'step.compensation_failed', 'step.waiting'])[(e.item->>1)::int + 1]
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
