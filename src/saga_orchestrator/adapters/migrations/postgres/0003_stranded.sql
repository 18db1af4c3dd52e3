-- Stranded sagas: unfinished sagas that recover() or a worker could not resume (no factory
-- for their type or definition version, unreadable, their factory raised), and why.
-- A mark holds while the saga's `version` is the one it was marked at: any later transition
-- (another process resumed it) makes it stale, so the hot path never has to clear it.
CREATE TABLE saga_stranded (
    saga_id      uuid PRIMARY KEY,
    version      integer NOT NULL,
    saga_version integer,
    reason       text NOT NULL,
    marked_at    timestamptz NOT NULL DEFAULT now()
);
