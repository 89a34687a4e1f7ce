-- Push order by a change number the database assigns, never a clock (issue 26, item 3): each
-- insert or update of a contact takes the next number of a counter. SQLite has one writer at a
-- time and the counter is bumped under the write lock, so numbers follow commit order: a push
-- that read up to number N has seen every change numbered N or less.
ALTER TABLE contacts ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;

CREATE TABLE contact_change_counter (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL
);
INSERT INTO contact_change_counter (id, seq) VALUES (1, 0);

CREATE TRIGGER contacts_change_seq_insert AFTER INSERT ON contacts
    FOR EACH ROW BEGIN
        UPDATE contact_change_counter SET seq = seq + 1 WHERE id = 1;
        UPDATE contacts SET change_seq = (SELECT seq FROM contact_change_counter WHERE id = 1)
            WHERE id = NEW.id;
    END;

CREATE TRIGGER contacts_change_seq_update
    AFTER UPDATE OF user_id, email, first_name, last_name, company, phone, job_title, updated_at
    ON contacts
    FOR EACH ROW BEGIN
        UPDATE contact_change_counter SET seq = seq + 1 WHERE id = 1;
        UPDATE contacts SET change_seq = (SELECT seq FROM contact_change_counter WHERE id = 1)
            WHERE id = NEW.id;
    END;

CREATE INDEX contacts_user_change_idx ON contacts (user_id, change_seq, id);
DROP INDEX IF EXISTS contacts_user_updated_idx;

-- Watermarks and push checkpoints of the timestamp days are not comparable with change numbers:
-- the next push reads every contact again; the fingerprints keep it from sending any twice.
UPDATE integrations SET push_watermark = NULL;

-- Contacts a provider refused for a passing reason (a locked row, a per-record rate limit): the
-- next push sends them again even though the watermark moved past them (item 6).
CREATE TABLE integration_retries (
    integration_id  TEXT NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    contact_id      TEXT NOT NULL,
    reason          TEXT NOT NULL,
    PRIMARY KEY (integration_id, contact_id)
);
