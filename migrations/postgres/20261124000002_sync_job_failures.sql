-- Sync jobs count refused contacts exactly (the failures column lists at most 100 of them).
ALTER TABLE sync_jobs ADD COLUMN contacts_failed BIGINT NOT NULL DEFAULT 0;
-- Workers look for due queued jobs and for running jobs whose lease expired.
CREATE INDEX sync_jobs_lease_idx ON sync_jobs (lease_expires_at) WHERE state = 'running';
