-- Issue 28: extra cards beyond the PRO limit, billed per card-month through a metered Stripe
-- price. `overage_enabled` is the user's opt-in; `extra_item_id` is the subscription's item of
-- the metered price at Stripe (kept after an opt-out, so usage already reported is invoiced).
ALTER TABLE subscriptions ADD COLUMN overage_enabled BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE subscriptions ADD COLUMN extra_item_id TEXT;

-- One row per extra card per calendar month (UTC), written before the meter event is sent;
-- `identifier` goes to Stripe with it, so a resend after a lost answer is not counted twice.
CREATE TABLE overage_reports (
    user_id          TEXT NOT NULL,
    month            TEXT NOT NULL,
    n                INTEGER NOT NULL,
    customer_id      TEXT NOT NULL,
    identifier       TEXT NOT NULL UNIQUE,
    -- failed: Stripe refused it for good (the customer is gone, say); never sent again.
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'reported', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    reported_at      TIMESTAMPTZ,
    PRIMARY KEY (user_id, month, n)
);
CREATE INDEX overage_reports_pending_idx ON overage_reports (created_at) WHERE state = 'pending';
