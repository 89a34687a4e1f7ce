-- Scheduled syncs: the recurring interval and direction are columns (read from the settings), and
-- `next_sync_at` says when the scheduler next queues a sync.
ALTER TABLE integrations ADD COLUMN sync_interval_seconds INTEGER;
ALTER TABLE integrations ADD COLUMN sync_direction TEXT NOT NULL DEFAULT 'push'
    CHECK (sync_direction IN ('push', 'import', 'both'));
ALTER TABLE integrations ADD COLUMN next_sync_at TEXT;
-- Incremental push: "<updated_at as YYYY-MM-DDTHH:MM:SS.fffZ>|<contact id>" of the last contact
-- a successful push sent.
ALTER TABLE integrations ADD COLUMN push_watermark TEXT;
UPDATE integrations
   SET sync_interval_seconds = CAST(json_extract(settings, '$.syncInterval') AS INTEGER),
       next_sync_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
 WHERE json_extract(settings, '$.syncInterval') GLOB '[0-9]*';
CREATE INDEX integrations_next_sync_idx ON integrations (next_sync_at)
    WHERE next_sync_at IS NOT NULL AND status = 'active';

-- SQLite cannot change a CHECK constraint: sync_jobs is rebuilt to allow 'canceled', with the
-- new columns (full_push, rate_limited).
CREATE TABLE sync_jobs_new (
    id                TEXT PRIMARY KEY,
    integration_id    TEXT NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    user_id           TEXT NOT NULL,
    direction         TEXT NOT NULL CHECK (direction IN ('push', 'import', 'both')),
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'partial', 'failed', 'canceled')),
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
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    contacts_failed   INTEGER NOT NULL DEFAULT 0,
    full_push         INTEGER NOT NULL DEFAULT 0,
    rate_limited      INTEGER NOT NULL DEFAULT 0
);
INSERT INTO sync_jobs_new (id, integration_id, user_id, direction, state, contacts_done,
    contacts_total, contacts_skipped, skipped_reason, failures, checkpoint, attempts, max_attempts,
    next_attempt_at, lease_owner, lease_expires_at, last_error, started_at, finished_at,
    created_at, updated_at, contacts_failed)
SELECT id, integration_id, user_id, direction, state, contacts_done, contacts_total,
    contacts_skipped, skipped_reason, failures, checkpoint, attempts, max_attempts,
    next_attempt_at, lease_owner, lease_expires_at, last_error, started_at, finished_at,
    created_at, updated_at, contacts_failed
FROM sync_jobs;
DROP TABLE sync_jobs;
ALTER TABLE sync_jobs_new RENAME TO sync_jobs;
CREATE UNIQUE INDEX sync_jobs_one_active_idx ON sync_jobs (integration_id) WHERE state IN ('queued', 'running');
CREATE INDEX sync_jobs_due_idx ON sync_jobs (next_attempt_at) WHERE state IN ('queued', 'running');
CREATE INDEX sync_jobs_user_idx ON sync_jobs (user_id, created_at DESC);
CREATE INDEX sync_jobs_lease_idx ON sync_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX sync_jobs_finished_idx ON sync_jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX sync_jobs_integration_idx ON sync_jobs (integration_id, created_at DESC);
CREATE TRIGGER sync_jobs_updated_at AFTER UPDATE ON sync_jobs
    FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
    BEGIN UPDATE sync_jobs SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;

CREATE INDEX activity_logs_created_idx ON activity_logs (created_at);

-- Contacts in push order: updated_at normalised to one text form (the card application and
-- sqlx write different ones), then id.
CREATE INDEX IF NOT EXISTS contacts_user_updated_idx
    ON contacts (user_id, strftime('%Y-%m-%dT%H:%M:%fZ', updated_at), id);

-- What each integration's provider holds of each contact, as far as this service knows: a
-- fingerprint of the values last pushed to it or imported from it. A push skips a contact whose
-- values match, so BOTH never sends back what it has just read, and an unchanged contact is never
-- rewritten at the provider.
CREATE TABLE integration_contacts (
    integration_id  TEXT NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    contact_id      TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    PRIMARY KEY (integration_id, contact_id)
);

-- OAuth flows bound to the browser that started them.
ALTER TABLE oauth_states ADD COLUMN authorize_url TEXT;
ALTER TABLE oauth_states ADD COLUMN browser_hash TEXT;
