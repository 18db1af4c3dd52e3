-- Workers: a saga in flight is leased to one process at a time. `lease_owner` and
-- `lease_expires_at` (on the database clock) say who may drive it and until when;
-- `lease_epoch` counts the leases ever granted, and every write of a lease holder names its
-- epoch, so a process whose lease was taken over can no longer write the saga (fencing).
-- `run_after` is the saga's durable timer: the earliest time a worker should pick it up
-- (a retry backoff or a deadline); NULL means now.
ALTER TABLE sagas
    ADD COLUMN lease_owner      text,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN lease_epoch      bigint NOT NULL DEFAULT 0,
    ADD COLUMN run_after        timestamptz;

-- The claim query: in-flight sagas, due first, oldest first.
CREATE INDEX sagas_runnable ON sagas (run_after NULLS FIRST, created_seq)
    WHERE status IN ('pending', 'running', 'compensating');

-- Transactional outbox: a transition's lifecycle events, written in its transaction.
-- `id` orders each saga's events (one saga's transitions commit one after another); the relay
-- reads the rows not yet sent, whatever order their transactions committed in.
CREATE TABLE saga_outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga_id    uuid NOT NULL,
    sequence   integer NOT NULL,
    event      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);

CREATE INDEX saga_outbox_unsent ON saga_outbox (id) WHERE sent_at IS NULL;
CREATE INDEX saga_outbox_sent ON saga_outbox (sent_at) WHERE sent_at IS NOT NULL;
