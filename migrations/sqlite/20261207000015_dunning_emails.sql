-- Issue 28: the dunning outbox. A failed renewal's reminder emails are written here in the
-- transaction of the event that reported the failure, one row per invoice and step, so
-- redeliveries and replicas never schedule one twice; a sender claims a row with a lease
-- (`claimed_until`) before it talks to the SMTP server. `recipient` is personal data: an
-- erasure deletes the user's rows.
CREATE TABLE dunning_emails (
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL,
    provider         TEXT NOT NULL CHECK (provider IN ('stripe', 'paypal', 'mpesa')),
    invoice_id       TEXT NOT NULL,
    step             TEXT NOT NULL,
    recipient        TEXT,
    due_at           TEXT NOT NULL,
    next_attempt_at  TEXT NOT NULL,
    grace_ends_at    TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sent', 'skipped', 'cancelled', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    claimed_until    TEXT,
    last_error       TEXT,
    sent_at          TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (provider, invoice_id, step)
);
CREATE INDEX dunning_emails_due_idx ON dunning_emails (next_attempt_at) WHERE state = 'pending';
CREATE INDEX dunning_emails_user_idx ON dunning_emails (user_id);
