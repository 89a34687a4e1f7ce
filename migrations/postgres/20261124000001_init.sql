-- Initial schema (PostgreSQL). Never edit an applied migration: add a new file instead.

-- Keeps updated_at current on every UPDATE.
CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- Cards and contacts belong to the card application (in production the tables are shared with it);
-- this service reads them to count usage and to sync contacts. Only the columns it needs are listed.
CREATE TABLE IF NOT EXISTS cards (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
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
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS contacts_user_id_id_idx ON contacts (user_id, id);

-- One row per user who ever started paying; a user without a row is on FREE.
CREATE TABLE subscriptions (
    user_id                   TEXT PRIMARY KEY,
    tier                      TEXT NOT NULL CHECK (tier IN ('free', 'pro', 'premium')),
    status                    TEXT NOT NULL CHECK (status IN ('active', 'trialing', 'past_due', 'canceled',
                                  'incomplete', 'incomplete_expired', 'unpaid', 'paused')),
    provider                  TEXT CHECK (provider IN ('stripe', 'paypal', 'mpesa')),
    provider_customer_id      TEXT,
    provider_subscription_id  TEXT,
    current_period_start      TIMESTAMPTZ,
    current_period_end        TIMESTAMPTZ,
    cancel_at_period_end      BOOLEAN NOT NULL DEFAULT FALSE,
    cancel_at                 TIMESTAMPTZ,
    canceled_at               TIMESTAMPTZ,
    past_due_since            TIMESTAMPTZ,
    created_at                TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX subscriptions_provider_subscription_idx
    ON subscriptions (provider, provider_subscription_id) WHERE provider_subscription_id IS NOT NULL;
CREATE TRIGGER subscriptions_updated_at BEFORE UPDATE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- The payment provider's customer of each user, created once and reused.
CREATE TABLE billing_customers (
    user_id      TEXT NOT NULL,
    provider     TEXT NOT NULL CHECK (provider IN ('stripe', 'paypal', 'mpesa')),
    customer_id  TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, provider),
    UNIQUE (provider, customer_id)
);

-- One row per provider invoice; money in integer minor units.
CREATE TABLE invoices (
    id                   UUID PRIMARY KEY,
    user_id              TEXT NOT NULL,
    provider             TEXT NOT NULL CHECK (provider IN ('stripe', 'paypal', 'mpesa')),
    provider_invoice_id  TEXT NOT NULL,
    provider_subscription_id TEXT,
    amount_due           BIGINT NOT NULL,
    amount_paid          BIGINT NOT NULL,
    currency             TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('draft', 'open', 'paid', 'uncollectible', 'void')),
    hosted_invoice_url   TEXT,
    invoice_pdf_url      TEXT,
    period_start         TIMESTAMPTZ,
    period_end           TIMESTAMPTZ,
    provider_created_at  TIMESTAMPTZ NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (provider, provider_invoice_id)
);
CREATE INDEX invoices_user_newest_idx ON invoices (user_id, provider_created_at DESC, id DESC);
CREATE TRIGGER invoices_updated_at BEFORE UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- A user's connection to a provider. credentials is the vault's encrypted envelope, never plaintext.
CREATE TABLE integrations (
    id            UUID PRIMARY KEY,
    user_id       TEXT NOT NULL,
    provider      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'error', 'needs_reauth')),
    credentials   BYTEA NOT NULL,
    settings      JSONB NOT NULL DEFAULT '{}'::jsonb,
    last_sync_at  TIMESTAMPTZ,
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, provider)
);
CREATE TRIGGER integrations_updated_at BEFORE UPDATE ON integrations
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- What happened to a user's billing and integrations, for support and for the user.
CREATE TABLE activity_logs (
    id          BIGSERIAL PRIMARY KEY,
    user_id     TEXT,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL,
    details     JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX activity_logs_user_idx ON activity_logs (user_id, created_at DESC);

-- Webhook inbox: one row per provider event, written in the same transaction as its effects.
CREATE TABLE webhook_inbox (
    provider      TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);

-- Durable sync jobs, leased by workers.
CREATE TABLE sync_jobs (
    id                UUID PRIMARY KEY,
    integration_id    UUID NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    user_id           TEXT NOT NULL,
    direction         TEXT NOT NULL CHECK (direction IN ('push', 'import', 'both')),
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'partial', 'failed')),
    contacts_done     BIGINT NOT NULL DEFAULT 0,
    contacts_total    BIGINT NOT NULL DEFAULT 0,
    contacts_skipped  BIGINT NOT NULL DEFAULT 0,
    skipped_reason    TEXT,
    failures          JSONB NOT NULL DEFAULT '[]'::jsonb,
    checkpoint        TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL DEFAULT 8,
    next_attempt_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner       TEXT,
    lease_expires_at  TIMESTAMPTZ,
    last_error        TEXT,
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- At most one queued or running job per integration.
CREATE UNIQUE INDEX sync_jobs_one_active_idx ON sync_jobs (integration_id) WHERE state IN ('queued', 'running');
CREATE INDEX sync_jobs_due_idx ON sync_jobs (next_attempt_at) WHERE state IN ('queued', 'running');
CREATE INDEX sync_jobs_user_idx ON sync_jobs (user_id, created_at DESC);
CREATE TRIGGER sync_jobs_updated_at BEFORE UPDATE ON sync_jobs
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- OAuth2 authorization states: random, single-use, bound to user and provider, expiring.
-- Only a hash of the state is stored; the PKCE verifier is stored encrypted.
CREATE TABLE oauth_states (
    state_hash      TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    provider        TEXT NOT NULL,
    code_verifier   BYTEA,
    redirect_after  TEXT NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX oauth_states_expires_idx ON oauth_states (expires_at);
