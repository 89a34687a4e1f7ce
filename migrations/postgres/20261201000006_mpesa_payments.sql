-- M-Pesa STK push requests (issue 14): one row per push, pending until the STK query confirms
-- it paid or failed. One pending request per user at a time (the partial unique index), so two
-- replicas cannot both push to the same phone.
CREATE TABLE mpesa_payments (
    id                   TEXT PRIMARY KEY,
    user_id              TEXT NOT NULL,
    tier                 TEXT NOT NULL CHECK (tier IN ('pro', 'premium')),
    amount               BIGINT NOT NULL,
    currency             TEXT NOT NULL,
    phone                TEXT NOT NULL,
    checkout_request_id  TEXT UNIQUE,
    state                TEXT NOT NULL CHECK (state IN ('pending', 'paid', 'failed')),
    reason               TEXT,
    receipt              TEXT,
    created_at           TIMESTAMPTZ NOT NULL,
    settled_at           TIMESTAMPTZ
);
CREATE UNIQUE INDEX mpesa_payments_one_pending ON mpesa_payments (user_id) WHERE state = 'pending';
CREATE INDEX mpesa_payments_user_idx ON mpesa_payments (user_id, created_at);
