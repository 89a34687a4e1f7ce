-- Attempts since the job last saved a batch: what SYNC_MAX_ATTEMPTS limits, so a long job
-- that keeps moving under a flaky provider is not given up. `attempts` stays the count over
-- the job's life (what GetSyncJob shows).
ALTER TABLE sync_jobs ADD COLUMN attempts_in_a_row INTEGER NOT NULL DEFAULT 0;
UPDATE sync_jobs SET attempts_in_a_row = attempts;
