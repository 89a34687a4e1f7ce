-- Scheduled syncs: the recurring interval and direction are columns (read from the settings), and
-- `next_sync_at` says when the scheduler next queues a sync. The scheduler reads the partial index.
ALTER TABLE integrations ADD COLUMN sync_interval_seconds INTEGER;
ALTER TABLE integrations ADD COLUMN sync_direction TEXT NOT NULL DEFAULT 'push'
    CHECK (sync_direction IN ('push', 'import', 'both'));
ALTER TABLE integrations ADD COLUMN next_sync_at TIMESTAMPTZ;
-- Incremental push: the (updated_at, id) of the last contact a successful push sent,
-- as "<updated_at as YYYY-MM-DDTHH:MM:SS.ffffffZ>|<contact id>".
ALTER TABLE integrations ADD COLUMN push_watermark TEXT;
UPDATE integrations
   SET sync_interval_seconds = CAST(settings->>'syncInterval' AS INTEGER),
       next_sync_at = now()
 WHERE settings->>'syncInterval' ~ '^[0-9]+$';
CREATE INDEX integrations_next_sync_idx ON integrations (next_sync_at)
    WHERE next_sync_at IS NOT NULL AND status = 'active';

-- A job may be canceled by its user; a full push ignores the watermark; a job limited again and
-- again by the provider counts its parks (the wait grows, and past a bound the job fails).
ALTER TABLE sync_jobs DROP CONSTRAINT IF EXISTS sync_jobs_state_check;
ALTER TABLE sync_jobs ADD CONSTRAINT sync_jobs_state_check
    CHECK (state IN ('queued', 'running', 'succeeded', 'partial', 'failed', 'canceled'));
ALTER TABLE sync_jobs ADD COLUMN full_push BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE sync_jobs ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0;
-- Retention prunes finished jobs and old activity entries by age.
CREATE INDEX sync_jobs_finished_idx ON sync_jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX sync_jobs_integration_idx ON sync_jobs (integration_id, created_at DESC);
CREATE INDEX activity_logs_created_idx ON activity_logs (created_at);

-- Contacts in push order (the card application's updated_at, then id).
CREATE INDEX IF NOT EXISTS contacts_user_updated_idx ON contacts (user_id, updated_at, id);

-- What each integration's provider holds of each contact, as far as this service knows: a
-- fingerprint of the values last pushed to it or imported from it. A push skips a contact whose
-- values match, so BOTH never sends back what it has just read, and an unchanged contact is never
-- rewritten at the provider.
CREATE TABLE integration_contacts (
    integration_id  UUID NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    contact_id      TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    PRIMARY KEY (integration_id, contact_id)
);

-- OAuth flows bound to the browser that started them: the sidecar's start route sets a cookie
-- whose hash is kept here (once), then redirects to the provider's authorization URL.
ALTER TABLE oauth_states ADD COLUMN authorize_url TEXT;
ALTER TABLE oauth_states ADD COLUMN browser_hash TEXT;

-- WatchSyncJob streams are woken by NOTIFY instead of polling.
CREATE FUNCTION notify_sync_job() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('sync_jobs', OLD.id::text);
    ELSE
        PERFORM pg_notify('sync_jobs', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER sync_jobs_notify AFTER INSERT OR UPDATE OR DELETE ON sync_jobs
    FOR EACH ROW EXECUTE FUNCTION notify_sync_job();
