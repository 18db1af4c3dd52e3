-- Step records apart (IncrementalSagaRepository): a saga with many steps keeps each step record
-- as a row of saga_steps, written only when a transition touches it, and its `state` holds
-- the rest of the document (every field, with "steps":[]). `steps_in_rows` says which form a
-- row is in; a whole-document write (`update`) sets it back to false, and the rows of
-- saga_steps are then ignored until the next write of every record. Reads put the document
-- back together, so every reader gets the whole document, whichever form it is stored in.
ALTER TABLE sagas ADD COLUMN steps_in_rows boolean NOT NULL DEFAULT false;

CREATE TABLE saga_steps (
    saga_id uuid    NOT NULL,
    idx     integer NOT NULL,
    record  text    NOT NULL,
    PRIMARY KEY (saga_id, idx)
);
