-- Usage counted by the database as the card app writes (issue 27, item 1): CheckLimit and
-- GetUsage read one row instead of counting a user's cards and contacts on every call.
--
-- Exact: the counts change in the same transaction as the rows they count (a rollback undoes
-- both), and SQLite has one writer at a time. A row whose counts are both zero is removed: a user
-- with nothing has no row here. (An `INSERT OR REPLACE` that replaces a row fires no delete
-- trigger unless recursive_triggers is on; the card app inserts and deletes plainly.)
CREATE TABLE usage_counts (
    user_id   TEXT PRIMARY KEY,
    cards     INTEGER NOT NULL DEFAULT 0,
    contacts  INTEGER NOT NULL DEFAULT 0
);

CREATE TRIGGER cards_usage_added AFTER INSERT ON cards
    FOR EACH ROW BEGIN
        INSERT INTO usage_counts (user_id, cards) VALUES (NEW.user_id, 1)
            ON CONFLICT (user_id) DO UPDATE SET cards = cards + 1;
    END;
CREATE TRIGGER cards_usage_removed AFTER DELETE ON cards
    FOR EACH ROW BEGIN
        UPDATE usage_counts SET cards = cards - 1 WHERE user_id = OLD.user_id;
        DELETE FROM usage_counts WHERE user_id = OLD.user_id AND cards = 0 AND contacts = 0;
    END;
CREATE TRIGGER cards_usage_moved AFTER UPDATE OF user_id ON cards
    FOR EACH ROW WHEN OLD.user_id IS NOT NEW.user_id BEGIN
        INSERT INTO usage_counts (user_id, cards) VALUES (NEW.user_id, 1)
            ON CONFLICT (user_id) DO UPDATE SET cards = cards + 1;
        UPDATE usage_counts SET cards = cards - 1 WHERE user_id = OLD.user_id;
        DELETE FROM usage_counts WHERE user_id = OLD.user_id AND cards = 0 AND contacts = 0;
    END;

CREATE TRIGGER contacts_usage_added AFTER INSERT ON contacts
    FOR EACH ROW BEGIN
        INSERT INTO usage_counts (user_id, contacts) VALUES (NEW.user_id, 1)
            ON CONFLICT (user_id) DO UPDATE SET contacts = contacts + 1;
    END;
CREATE TRIGGER contacts_usage_removed AFTER DELETE ON contacts
    FOR EACH ROW BEGIN
        UPDATE usage_counts SET contacts = contacts - 1 WHERE user_id = OLD.user_id;
        DELETE FROM usage_counts WHERE user_id = OLD.user_id AND cards = 0 AND contacts = 0;
    END;
CREATE TRIGGER contacts_usage_moved AFTER UPDATE OF user_id ON contacts
    FOR EACH ROW WHEN OLD.user_id IS NOT NEW.user_id BEGIN
        INSERT INTO usage_counts (user_id, contacts) VALUES (NEW.user_id, 1)
            ON CONFLICT (user_id) DO UPDATE SET contacts = contacts + 1;
        UPDATE usage_counts SET contacts = contacts - 1 WHERE user_id = OLD.user_id;
        DELETE FROM usage_counts WHERE user_id = OLD.user_id AND cards = 0 AND contacts = 0;
    END;

INSERT INTO usage_counts (user_id, cards, contacts)
    SELECT user_id, sum(cards), sum(contacts) FROM (
        SELECT user_id, count(*) AS cards, 0 AS contacts FROM cards GROUP BY user_id
        UNION ALL
        SELECT user_id, 0, count(*) FROM contacts GROUP BY user_id
    ) GROUP BY user_id;
