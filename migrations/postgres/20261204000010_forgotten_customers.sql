-- Issue 25. A customer the provider deleted is forgotten for checkouts but remembered for the
-- erasure: its old webhook payloads still name the user and must be scrubbed with the rest.
CREATE TABLE forgotten_customers (
    provider     TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    PRIMARY KEY (provider, customer_id)
);
CREATE INDEX forgotten_customers_user_idx ON forgotten_customers (user_id);
