-- Failed sagas need an operator: find them (and count them for the saga_states gauge)
-- without scanning every finished saga.
CREATE INDEX sagas_failed ON sagas (saga_type) WHERE status = 'failed';
