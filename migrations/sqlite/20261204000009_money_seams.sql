-- Issue 25. Each M-Pesa payment keeps the period it bought (periods run in order, each at its
-- own tier), and the poller asks about each pending request again, spaced out, least recently asked first.
ALTER TABLE mpesa_payments ADD COLUMN period_start TEXT;
ALTER TABLE mpesa_payments ADD COLUMN period_end TEXT;
ALTER TABLE mpesa_payments ADD COLUMN next_poll_at TEXT;
ALTER TABLE mpesa_payments ADD COLUMN polls INTEGER NOT NULL DEFAULT 0;
CREATE INDEX mpesa_payments_pending_poll_idx ON mpesa_payments (next_poll_at) WHERE state = 'pending';
