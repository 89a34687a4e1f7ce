-- Usage counted by the database as the card app writes (issue 27, item 1): CheckLimit and
-- GetUsage read one row instead of counting a user's cards and contacts on every call.
--
-- Exact under concurrency: the counts change in the same transaction as the rows they count (a
-- rollback undoes both), and the upsert locks the user's row, so two transactions adding or
-- removing one user's rows apply their changes one after the other. Inserts and deletes are
-- counted once per statement (transition tables), so a bulk insert touches the row once. A row
-- whose counts are both zero is removed: a user with nothing has no row here.
--
-- The functions run as their owner (SECURITY DEFINER, with the search path fixed), so the card
-- app's role needs no privilege on this service's table. A card-app transaction now locks the
-- user's count row until it commits: two transactions writing the same users in opposite orders
-- can deadlock, and PostgreSQL aborts one (the card app retries it, as for any deadlock).
CREATE TABLE usage_counts (
    user_id   TEXT PRIMARY KEY,
    cards     BIGINT NOT NULL DEFAULT 0,
    contacts  BIGINT NOT NULL DEFAULT 0
);

-- Rows added by one statement, per user. Shared by cards and contacts (TG_TABLE_NAME).
CREATE FUNCTION usage_counts_added() RETURNS trigger AS $$
DECLARE
    is_card BOOLEAN := TG_TABLE_NAME = 'cards';
BEGIN
    INSERT INTO usage_counts AS u (user_id, cards, contacts)
        SELECT user_id,
               CASE WHEN is_card THEN count(*) ELSE 0 END,
               CASE WHEN is_card THEN 0 ELSE count(*) END
        FROM added GROUP BY user_id ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE
        SET cards = u.cards + EXCLUDED.cards, contacts = u.contacts + EXCLUDED.contacts;
    RETURN NULL;
END
$$ LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT;

-- Rows removed by one statement, per user.
CREATE FUNCTION usage_counts_removed() RETURNS trigger AS $$
DECLARE
    is_card BOOLEAN := TG_TABLE_NAME = 'cards';
BEGIN
    WITH gone AS (
        SELECT user_id, count(*) AS n FROM removed GROUP BY user_id ORDER BY user_id
    )
    UPDATE usage_counts u
        SET cards = u.cards - CASE WHEN is_card THEN gone.n ELSE 0 END,
            contacts = u.contacts - CASE WHEN is_card THEN 0 ELSE gone.n END
        FROM gone WHERE u.user_id = gone.user_id;
    DELETE FROM usage_counts u
        WHERE u.cards = 0 AND u.contacts = 0
          AND u.user_id IN (SELECT DISTINCT user_id FROM removed);
    RETURN NULL;
END
$$ LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT;

-- A row moved to another user (rare: a row-level trigger that fires only then).
CREATE FUNCTION usage_counts_moved() RETURNS trigger AS $$
DECLARE
    card INTEGER := CASE WHEN TG_TABLE_NAME = 'cards' THEN 1 ELSE 0 END;
BEGIN
    INSERT INTO usage_counts AS u (user_id, cards, contacts) VALUES (NEW.user_id, card, 1 - card)
    ON CONFLICT (user_id) DO UPDATE
        SET cards = u.cards + EXCLUDED.cards, contacts = u.contacts + EXCLUDED.contacts;
    UPDATE usage_counts SET cards = cards - card, contacts = contacts - (1 - card)
        WHERE user_id = OLD.user_id;
    DELETE FROM usage_counts WHERE user_id = OLD.user_id AND cards = 0 AND contacts = 0;
    RETURN NULL;
END
$$ LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT;

-- TRUNCATE empties the table: nobody has any.
CREATE FUNCTION usage_counts_truncated() RETURNS trigger AS $$
BEGIN
    IF TG_TABLE_NAME = 'cards' THEN
        UPDATE usage_counts SET cards = 0 WHERE cards <> 0;
    ELSE
        UPDATE usage_counts SET contacts = 0 WHERE contacts <> 0;
    END IF;
    DELETE FROM usage_counts WHERE cards = 0 AND contacts = 0;
    RETURN NULL;
END
$$ LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT;

-- Triggers first: creating them locks out the card app's writers until this migration commits,
-- so the counts below are taken with no write in between.
CREATE TRIGGER cards_usage_added AFTER INSERT ON cards
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION usage_counts_added();
CREATE TRIGGER cards_usage_removed AFTER DELETE ON cards
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION usage_counts_removed();
CREATE TRIGGER cards_usage_moved AFTER UPDATE OF user_id ON cards
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION usage_counts_moved();
CREATE TRIGGER cards_usage_truncated AFTER TRUNCATE ON cards
    FOR EACH STATEMENT EXECUTE FUNCTION usage_counts_truncated();

CREATE TRIGGER contacts_usage_added AFTER INSERT ON contacts
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION usage_counts_added();
CREATE TRIGGER contacts_usage_removed AFTER DELETE ON contacts
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION usage_counts_removed();
CREATE TRIGGER contacts_usage_moved AFTER UPDATE OF user_id ON contacts
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION usage_counts_moved();
CREATE TRIGGER contacts_usage_truncated AFTER TRUNCATE ON contacts
    FOR EACH STATEMENT EXECUTE FUNCTION usage_counts_truncated();

INSERT INTO usage_counts (user_id, cards, contacts)
    SELECT user_id, sum(cards), sum(contacts) FROM (
        SELECT user_id, count(*) AS cards, 0 AS contacts FROM cards GROUP BY user_id
        UNION ALL
        SELECT user_id, 0, count(*) FROM contacts GROUP BY user_id
    ) counted GROUP BY user_id;
