-- Initial schema (SQLite). Never edit an applied migration: add a new file instead.
-- Timestamps are RFC 3339 text in UTC; booleans are 0/1; JSON is text; ids are text.

CREATE TABLE IF NOT EXISTS cards (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS cards_user_id_idx ON cards (user_id);

CREATE TABLE IF NOT EXISTS contacts (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    email       TEXT,
    first_name  TEXT,
    last_name   TEXT,
    company     TEXT,
    phone       TEXT,
    job_title   TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS contacts_user_id_id_idx ON contacts (user_id, id);

CREATE TABLE subscriptions (
    user_id                   TEXT PRIMARY KEY,
    tier                      TEXT NOT NULL CHECK (tier IN ('free', 'pro', 'premium')),
    status                    TEXT NOT NULL CHECK (status IN ('active', 'trialing', 'past_due', 'canceled',
                                  'incomplete', 'incomplete_expired', 'unpaid', 'paused')),
    provider                  TEXT CHECK (provider IN ('stripe', 'paypal', 'mpesa')),
    provider_customer_id      TEXT,
    provider_subscription_id  TEXT,
    current_period_start      TEXT,
    current_period_end        TEXT,
    cancel_at_period_end      INTEGER NOT NULL DEFAULT 0,
    cancel_at                 TEXT,
    canceled_at               TEXT,
    past_due_since            TEXT,
    created_at                TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at                TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX subscriptions_provider_subscription_idx
    ON subscriptions (provider, provider_subscription_id) WHERE provider_subscription_id IS NOT NULL;
CREATE TRIGGER subscriptions_updated_at AFTER UPDATE ON subscriptions
    FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
    BEGIN UPDATE subscriptions SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE user_id = NEW.user_id; END;

CREATE TABLE billing_customers (
    user_id      TEXT NOT NULL,
    provider     TEXT NOT NULL CHECK (provider IN ('stripe', 'paypal', 'mpesa')),
    customer_id  TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (user_id, provider),
    UNIQUE (provider, customer_id)
);

CREATE TABLE invoices (
    id                   TEXT PRIMARY KEY,
    user_id              TEXT NOT NULL,
    provider             TEXT NOT NULL CHECK (provider IN ('stripe', 'paypal', 'mpesa')),
    provider_invoice_id  TEXT NOT NULL,
    provider_subscription_id TEXT,
    amount_due           INTEGER NOT NULL,
    amount_paid          INTEGER NOT NULL,
    currency             TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('draft', 'open', 'paid', 'uncollectible', 'void')),
    hosted_invoice_url   TEXT,
    invoice_pdf_url      TEXT,
    period_start         TEXT,
    period_end           TEXT,
    provider_created_at  TEXT NOT NULL,
    created_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (provider, provider_invoice_id)
);
CREATE INDEX invoices_user_newest_idx ON invoices (user_id, provider_created_at DESC, id DESC);
CREATE TRIGGER invoices_updated_at AFTER UPDATE ON invoices
    FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
    BEGIN UPDATE invoices SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;

CREATE TABLE integrations (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    provider      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'error', 'needs_reauth')),
    credentials   BLOB NOT NULL,
    settings      TEXT NOT NULL DEFAULT '{}',
    last_sync_at  TEXT,
    last_error    TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (user_id, provider)
);
CREATE TRIGGER integrations_updated_at AFTER UPDATE ON integrations
    FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
    BEGIN UPDATE integrations SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;

CREATE TABLE activity_logs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL,
    details     TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX activity_logs_user_idx ON activity_logs (user_id, created_at DESC);

CREATE TABLE webhook_inbox (
    provider      TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    received_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (provider, event_id)
);

CREATE TABLE sync_jobs (
    id                TEXT PRIMARY KEY,
    integration_id    TEXT NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    user_id           TEXT NOT NULL,
    direction         TEXT NOT NULL CHECK (direction IN ('push', 'import', 'both')),
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'partial', 'failed')),
    contacts_done     INTEGER NOT NULL DEFAULT 0,
    contacts_total    INTEGER NOT NULL DEFAULT 0,
    contacts_skipped  INTEGER NOT NULL DEFAULT 0,
    skipped_reason    TEXT,
    failures          TEXT NOT NULL DEFAULT '[]',
    checkpoint        TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL DEFAULT 8,
    next_attempt_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    lease_owner       TEXT,
    lease_expires_at  TEXT,
    last_error        TEXT,
    started_at        TEXT,
    finished_at       TEXT,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX sync_jobs_one_active_idx ON sync_jobs (integration_id) WHERE state IN ('queued', 'running');
CREATE INDEX sync_jobs_due_idx ON sync_jobs (next_attempt_at) WHERE state IN ('queued', 'running');
CREATE INDEX sync_jobs_user_idx ON sync_jobs (user_id, created_at DESC);
CREATE TRIGGER sync_jobs_updated_at AFTER UPDATE ON sync_jobs
    FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
    BEGIN UPDATE sync_jobs SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;

CREATE TABLE oauth_states (
    state_hash      TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    provider        TEXT NOT NULL,
    code_verifier   BLOB,
    redirect_after  TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX oauth_states_expires_idx ON oauth_states (expires_at);
