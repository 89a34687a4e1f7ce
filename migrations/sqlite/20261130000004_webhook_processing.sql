-- Webhooks are stored on intake and applied later by the event processor (issue 11).
-- Rows recorded before this migration were processed at intake: they are 'done'.
ALTER TABLE webhook_inbox ADD COLUMN event_created_at TEXT;
ALTER TABLE webhook_inbox ADD COLUMN object_id TEXT;
ALTER TABLE webhook_inbox ADD COLUMN order_key TEXT;
ALTER TABLE webhook_inbox ADD COLUMN payload TEXT;
ALTER TABLE webhook_inbox ADD COLUMN state TEXT NOT NULL DEFAULT 'done'
    CHECK (state IN ('pending', 'done', 'failed'));
ALTER TABLE webhook_inbox ADD COLUMN outcome TEXT;
ALTER TABLE webhook_inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE webhook_inbox ADD COLUMN last_error TEXT;
ALTER TABLE webhook_inbox ADD COLUMN processed_at TEXT;
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
    event_created_at  TEXT NOT NULL,
    received_at       TEXT NOT NULL,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX webhook_queue_received_idx ON webhook_queue (received_at);
CREATE INDEX webhook_queue_order_idx ON webhook_queue (order_key, event_created_at);

-- The queue mirrors the inbox's pending rows, kept so by the database in the same statement:
-- an event stored pending is queued; one leaving pending (done, failed) leaves the queue; a
-- replayed one (back to pending) is queued again.
CREATE TRIGGER webhook_inbox_queue_insert AFTER INSERT ON webhook_inbox
    WHEN NEW.state = 'pending'
BEGIN
    INSERT OR IGNORE INTO webhook_queue (provider, event_id, order_key, event_created_at, received_at)
    VALUES (NEW.provider, NEW.event_id, NEW.order_key, NEW.event_created_at, NEW.received_at);
END;
CREATE TRIGGER webhook_inbox_queue_update AFTER UPDATE OF state ON webhook_inbox
    WHEN OLD.state IS NOT NEW.state
BEGIN
    DELETE FROM webhook_queue WHERE provider = OLD.provider AND event_id = OLD.event_id;
    INSERT OR IGNORE INTO webhook_queue (provider, event_id, order_key, event_created_at, received_at)
    SELECT NEW.provider, NEW.event_id, NEW.order_key, NEW.event_created_at, NEW.received_at
    WHERE NEW.state = 'pending';
END;

CREATE TABLE webhook_streams (
    order_key    TEXT PRIMARY KEY,
    lease_owner  TEXT,
    lease_until  TEXT NOT NULL
);

ALTER TABLE subscriptions ADD COLUMN state_as_of TEXT;
ALTER TABLE subscriptions ADD COLUMN change_lock_owner TEXT;
ALTER TABLE subscriptions ADD COLUMN change_lock_until TEXT;
ALTER TABLE invoices ADD COLUMN state_as_of TEXT;
CREATE INDEX subscriptions_period_end_idx ON subscriptions (current_period_end)
    WHERE provider_subscription_id IS NOT NULL;

CREATE TABLE checkout_sessions (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    provider    TEXT NOT NULL,
    url         TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'expired')),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX checkout_sessions_user_idx ON checkout_sessions (user_id);

