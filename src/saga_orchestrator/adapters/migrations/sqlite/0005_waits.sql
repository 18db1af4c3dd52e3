-- Durable waits (wait_for_event, sleep_for): a saga parked at a wait step has `wake_at`, when
-- it is due (UTC ISO 8601 with microseconds, so that it compares as text; the year 9999 when
-- only an event wakes it); every other saga has NULL. `waiting_for` is the name of the event it
-- waits for (NULL for a timer): storing that event, and only that one, makes the saga due.
ALTER TABLE sagas ADD COLUMN wake_at TEXT;
ALTER TABLE sagas ADD COLUMN waiting_for TEXT;

CREATE INDEX sagas_parked ON sagas (wake_at) WHERE wake_at IS NOT NULL;

-- Events addressed to sagas, kept until a wait step consumes them (the consuming step records
-- the event's id in the saga's state). `seq` keeps the order they were stored in.
CREATE TABLE saga_inbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    saga_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    received_at TEXT NOT NULL
);

CREATE INDEX saga_inbox_by_saga ON saga_inbox (saga_id, seq);
