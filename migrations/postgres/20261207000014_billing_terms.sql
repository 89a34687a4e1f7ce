-- Issue 28: the terms a subscription is charged on, as the provider reports them: how often it
-- renews, its currency (a Stripe customer keeps the currency of its first subscription) and
-- when a free trial ends.
ALTER TABLE subscriptions ADD COLUMN billing_interval TEXT
    CHECK (billing_interval IN ('month', 'year'));
ALTER TABLE subscriptions ADD COLUMN currency TEXT;
ALTER TABLE subscriptions ADD COLUMN trial_end TIMESTAMPTZ;
