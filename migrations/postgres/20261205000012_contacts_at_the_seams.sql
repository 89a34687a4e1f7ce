-- Push order by a change number the database assigns, never a clock (issue 26, item 3): each
-- insert or update of a contact stamps it with the id of the transaction writing it. A push
-- reads the oldest transaction still running when it starts (its horizon) and never leaves its
-- watermark past it, so a change committed late is read by the next push whatever its
-- updated_at says.
ALTER TABLE contacts ADD COLUMN change_seq BIGINT NOT NULL DEFAULT 0;

CREATE FUNCTION set_contact_change_seq() RETURNS trigger AS $$
BEGIN
    NEW.change_seq = pg_current_xact_id()::text::bigint;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER contacts_change_seq BEFORE INSERT OR UPDATE ON contacts
    FOR EACH ROW EXECUTE FUNCTION set_contact_change_seq();

CREATE INDEX contacts_user_change_idx ON contacts (user_id, change_seq, id);
DROP INDEX IF EXISTS contacts_user_updated_idx;

-- Watermarks and push checkpoints of the timestamp days are not comparable with change numbers:
-- the next push reads every contact again; the fingerprints keep it from sending any twice.
UPDATE integrations SET push_watermark = NULL;

-- Contacts a provider refused for a passing reason (a locked row, a per-record rate limit): the
-- next push sends them again even though the watermark moved past them (item 6).
CREATE TABLE integration_retries (
    integration_id  UUID NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    contact_id      TEXT NOT NULL,
    reason          TEXT NOT NULL,
    PRIMARY KEY (integration_id, contact_id)
);
