-- The example's services. Money is TEXT holding a Decimal's exact string; ids are UUID text;
-- times are ISO 8601 UTC.

CREATE TABLE IF NOT EXISTS products (
    sku           TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    price         TEXT NOT NULL,
    stock         INTEGER NOT NULL CHECK (stock >= 0),  -- available to reserve
    initial_stock INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS reservations (
    id         TEXT PRIMARY KEY,
    order_id   TEXT NOT NULL UNIQUE,
    -- active: held; committed: shipped out; released: returned to stock
    status     TEXT NOT NULL CHECK (status IN ('active', 'committed', 'released')),
    reason     TEXT,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS reservation_items (
    reservation_id TEXT NOT NULL REFERENCES reservations (id),
    sku            TEXT NOT NULL REFERENCES products (sku),
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku)
);

CREATE INDEX IF NOT EXISTS reservations_expiring ON reservations (expires_at)
    WHERE status = 'active';

CREATE TABLE IF NOT EXISTS accounts (
    customer_id     TEXT PRIMARY KEY,
    balance         TEXT NOT NULL,
    initial_balance TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS payments (
    id              TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    customer_id     TEXT NOT NULL REFERENCES accounts (customer_id),
    amount          TEXT NOT NULL,
    currency        TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('captured', 'refunded')),
    created_at      TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS payments_by_order ON payments (order_id);

-- Every movement of money, append-only. A refund's key is unique: one refund per payment.
CREATE TABLE IF NOT EXISTS ledger (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id  TEXT NOT NULL REFERENCES payments (id),
    customer_id TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('charge', 'refund')),
    amount      TEXT NOT NULL,
    entry_key   TEXT NOT NULL UNIQUE,
    at          TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS shipments (
    id              TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL UNIQUE,
    tracking_number TEXT NOT NULL UNIQUE,
    -- created (dispatched once dispatch_at has passed), cancelled before dispatch, or returned
    status          TEXT NOT NULL CHECK (status IN ('created', 'cancelled', 'returned')),
    address         TEXT NOT NULL,
    items           TEXT NOT NULL,
    dispatch_at     TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS notifications (
    id         TEXT PRIMARY KEY,
    dedup_key  TEXT NOT NULL UNIQUE,
    user_id    TEXT,
    template   TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Fencing (services.py): per service, order and saga, the highest fencing token a call
-- carried. A call with a lower token comes from a process that lost the saga: refused.
CREATE TABLE IF NOT EXISTS fences (
    service  TEXT NOT NULL,
    order_id TEXT NOT NULL,
    saga_id  TEXT NOT NULL,  -- '' when the caller named no saga
    token    INTEGER NOT NULL,
    PRIMARY KEY (service, order_id, saga_id)
);

-- Every call that carried a fencing token, in order: accepted (it went on to act, or to give
-- its business answer), or refused as stale (it did nothing). `highest` is the fence it met.
CREATE TABLE IF NOT EXISTS fencing_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    service   TEXT NOT NULL,
    operation TEXT NOT NULL,
    order_id  TEXT NOT NULL,
    saga_id   TEXT NOT NULL,
    token     INTEGER NOT NULL,
    highest   INTEGER,
    outcome   TEXT NOT NULL CHECK (outcome IN ('accepted', 'refused')),
    at        TEXT NOT NULL
);

-- The HTTP API's Idempotency-Key records.
CREATE TABLE IF NOT EXISTS api_requests (
    idempotency_key TEXT PRIMARY KEY,
    fingerprint     TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    status_code     INTEGER,
    response        TEXT,
    created_at      TEXT NOT NULL
);

-- The asynchronous payment provider (async_payments.py): a payment is authorised at once and
-- captured later by the provider, which then sends a signed webhook (event_id). Only a capture
-- moves money; it also writes a `payments` row (status captured) and a ledger charge, as a
-- synchronous charge does, and a refund reverses both.
CREATE TABLE IF NOT EXISTS payment_intents (
    id              TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    customer_id     TEXT NOT NULL REFERENCES accounts (customer_id),
    amount          TEXT NOT NULL,
    currency        TEXT NOT NULL,
    -- authorized, then captured or failed (by the provider) or voided (by the shop);
    -- captured, then refunded (by the shop)
    status          TEXT NOT NULL
        CHECK (status IN ('authorized', 'captured', 'failed', 'voided', 'refunded')),
    event_id        TEXT UNIQUE,  -- the webhook notice that told the capture's outcome
    reason          TEXT,         -- why the capture failed, or the payment was voided
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS payment_intents_by_order ON payment_intents (order_id);
