-- Issue 29: provider webhooks in, and each integration's health.

-- How a connection hears of changes at its provider: the HubSpot portal it belongs to, the
-- hash of the secret in its Mailchimp webhook URL or of its Zoho channel token, the provider's
-- id of the registration (Mailchimp webhook, Zoho channel) and when it expires. The lease lets
-- one webhook worker at a time apply the connection's events, in order.
CREATE TABLE integration_webhooks (
    integration_id  TEXT PRIMARY KEY REFERENCES integrations (id) ON DELETE CASCADE,
    provider        TEXT NOT NULL,
    account         TEXT,
    secret_hash     TEXT,
    -- The secret before the last renewal (Zoho), accepted until the next one: notifications
    -- sent while a renewal is on its way still count.
    previous_secret_hash  TEXT,
    remote_id       TEXT,
    expires_at      TEXT,
    -- One replica at a time renews a channel; a failed renewal waits until then.
    renewal_claimed_until  TEXT,
    lease_owner     TEXT,
    lease_until     TEXT,
    created_at      TEXT NOT NULL
);
CREATE INDEX integration_webhooks_account_idx ON integration_webhooks (provider, account);
CREATE INDEX integration_webhooks_secret_idx ON integration_webhooks (provider, secret_hash);
CREATE INDEX integration_webhooks_previous_secret_idx
    ON integration_webhooks (provider, previous_secret_hash);
CREATE INDEX integration_webhooks_expiry_idx ON integration_webhooks (expires_at)
    WHERE expires_at IS NOT NULL;

-- The provider webhook inbox: one row per event and connection, unique by the provider's
-- event id (or the delivery's digest), so a redelivery stores nothing. A disconnected
-- connection's events go with it.
CREATE TABLE integration_webhook_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    integration_id   TEXT NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    delivery_key     TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    received_at      TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    outcome          TEXT,
    applied_at       TEXT,
    last_error       TEXT
);
CREATE INDEX integration_webhook_events_pending_idx
    ON integration_webhook_events (integration_id, id) WHERE state = 'pending';
CREATE INDEX integration_webhook_events_done_idx
    ON integration_webhook_events (applied_at) WHERE state <> 'pending';

-- Addresses that unsubscribed (or were cleaned) at the provider: no later push subscribes
-- them again.
CREATE TABLE integration_unsubscribes (
    integration_id  TEXT NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    email           TEXT NOT NULL,
    at              TEXT NOT NULL,
    PRIMARY KEY (integration_id, email)
);

-- Health: sync attempts failed in a row, the last success, and the failures and rate-limit
-- waits of the last day. Kept apart from `integrations` so a sync does not move the
-- integration's update time.
CREATE TABLE integration_health (
    integration_id     TEXT PRIMARY KEY REFERENCES integrations (id) ON DELETE CASCADE,
    failures_in_a_row  INTEGER NOT NULL DEFAULT 0,
    last_failure       TEXT,
    last_success_at    TEXT
);
CREATE TABLE integration_incidents (
    integration_id  TEXT NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL CHECK (kind IN ('failure', 'rate_limit')),
    at              TEXT NOT NULL
);
CREATE INDEX integration_incidents_idx ON integration_incidents (integration_id, at);

-- A push owed to a connection: NotifyContactsChanged came while its push ran (whose read may
-- be behind the change); the worker queues it when that job ends.
CREATE TABLE integration_owed_pushes (
    integration_id  TEXT PRIMARY KEY REFERENCES integrations (id) ON DELETE CASCADE,
    owed_since      TEXT NOT NULL
);
