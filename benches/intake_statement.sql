-- The webhook intake's one statement (src/store/webhook_sql.rs, store_event), for pgbench:
-- a new event id each time, a payload the size of a Stripe invoice event (~6 KB).
\set n random(1, 2000000000)
\set customer random(1, 10000)
INSERT INTO webhook_inbox (provider, event_id, event_type, received_at, event_created_at,
    object_id, order_key, payload, state)
VALUES ('stripe', 'evt_bench_' || :n || '_' || :client_id, 'invoice.paid', now(), now(),
    'in_' || :n, 'cus_' || :customer, repeat('x', 6000), 'pending')
ON CONFLICT (provider, event_id) DO NOTHING;
