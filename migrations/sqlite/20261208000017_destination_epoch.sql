-- Issue 26, item 1 (the race): a push to the old destination that ended after the destination
-- changed wrote the old destination's watermark and fingerprints over the forgotten ones. Each
-- destination change starts a new epoch; a push remembers what it sent only under the epoch it
-- started in.
ALTER TABLE integrations ADD COLUMN destination_epoch INTEGER NOT NULL DEFAULT 0;
