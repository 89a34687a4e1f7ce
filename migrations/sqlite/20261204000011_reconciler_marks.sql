-- Issue 25. The reconciler lists events from where its last complete listing reached (not an
-- hour before the newest stored event), and checks an ended subscription for a live one to
-- adopt once per ending, newest first, whichever replica gets to it first.
CREATE TABLE reconciler_marks (
    name  TEXT PRIMARY KEY,
    at    TEXT NOT NULL
);
ALTER TABLE subscriptions ADD COLUMN adoption_checked_at TEXT;
