-- The connect dialog's settings travel with an OAuth state until the provider sends the user back.
ALTER TABLE oauth_states ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
-- One token refresh at a time per integration, across every replica: a short lease.
ALTER TABLE integrations ADD COLUMN refresh_lock_owner TEXT;
ALTER TABLE integrations ADD COLUMN refresh_lock_until TEXT;
-- Imports match contacts by user and email (not unique: the card application may hold two
-- contacts with one address; an import updates the oldest).
CREATE INDEX IF NOT EXISTS contacts_user_email_idx ON contacts (user_id, lower(email));
