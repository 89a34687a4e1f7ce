-- Webhooks are stored on intake and applied later by the event processor (issue 11).
-- Rows recorded before this migration were processed at intake: they are 'done'.
ALTER TABLE webhook_inbox
    ADD COLUMN event_created_at TIMESTAMPTZ,
    ADD COLUMN object_id        TEXT,
    ADD COLUMN order_key        TEXT,
    ADD COLUMN payload          TEXT,
    ADD COLUMN state            TEXT NOT NULL DEFAULT 'done'
        CHECK (state IN ('pending', 'done', 'failed')),
    ADD COLUMN outcome          TEXT,
    ADD COLUMN attempts         INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN last_error       TEXT,
    ADD COLUMN processed_at     TIMESTAMPTZ;
CREATE INDEX webhook_inbox_failed_idx ON webhook_inbox (received_at) WHERE state = 'failed';
CREATE INDEX webhook_inbox_created_idx ON webhook_inbox (provider, event_created_at);

-- Events waiting to be applied, one narrow row each (the inbox row keeps the payload and the
-- history). The processor's scans touch only this table, so they stay cheap whatever the
-- planner knows about the inbox (measured: ordering the wide inbox by arrival cost 800 ms a
-- claim on a fresh database during a storm).
CREATE TABLE webhook_queue (
    provider          TEXT NOT NULL,
    event_id          TEXT NOT NULL,
    order_key         TEXT NOT NULL,
    event_created_at  TIMESTAMPTZ NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX webhook_queue_received_idx ON webhook_queue (received_at);
CREATE INDEX webhook_queue_order_idx ON webhook_queue (order_key, event_created_at);

-- The queue mirrors the inbox's pending rows, kept so by the database in the same statement:
-- an event stored pending is queued; one leaving pending (done, failed) leaves the queue; a
-- replayed one (back to pending) is queued again.
CREATE FUNCTION webhook_queue_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.state = 'pending' AND NEW.state <> 'pending' THEN
        DELETE FROM webhook_queue WHERE provider = OLD.provider AND event_id = OLD.event_id;
    END IF;
    IF NEW.state = 'pending' AND (TG_OP = 'INSERT' OR OLD.state <> 'pending') THEN
        INSERT INTO webhook_queue (provider, event_id, order_key, event_created_at, received_at)
        VALUES (NEW.provider, NEW.event_id, NEW.order_key, NEW.event_created_at, NEW.received_at)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_inbox_queue AFTER INSERT OR UPDATE OF state ON webhook_inbox
    FOR EACH ROW EXECUTE FUNCTION webhook_queue_sync();

-- One processor at a time per customer (the order key): a lease, also used to hold a customer
-- back after a failure (lease_owner NULL, lease_until = the next attempt).
CREATE TABLE webhook_streams (
    order_key    TEXT PRIMARY KEY,
    lease_owner  TEXT,
    lease_until  TIMESTAMPTZ NOT NULL
);

-- The instant the stored state is known to be current: a snapshot older than it is stale.
ALTER TABLE subscriptions
    ADD COLUMN state_as_of        TIMESTAMPTZ,
    ADD COLUMN change_lock_owner  TEXT,
    ADD COLUMN change_lock_until  TIMESTAMPTZ;
ALTER TABLE invoices ADD COLUMN state_as_of TIMESTAMPTZ;
CREATE INDEX subscriptions_period_end_idx ON subscriptions (current_period_end)
    WHERE provider_subscription_id IS NOT NULL;

-- Checkout sessions this service opened, so earlier open ones can be expired.
CREATE TABLE checkout_sessions (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    provider    TEXT NOT NULL,
    url         TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'expired')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX checkout_sessions_user_idx ON checkout_sessions (user_id);

