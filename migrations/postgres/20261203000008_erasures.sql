-- Users' data rights (issue 16). One anonymous entry per erased user: `subject_hash` is the hex
-- SHA-256 of "nexus-erasure-v1:" followed by the user id. It lets a repeated erasure say what is
-- already gone, and keeps a late webhook from linking a checkout to an erased user; nothing else
-- about the user is kept. `id` is the pseudonym the kept invoice rows carry instead of the user id.
CREATE TABLE erasures (
    id            TEXT PRIMARY KEY,
    subject_hash  TEXT NOT NULL UNIQUE,
    requested_by  TEXT NOT NULL CHECK (requested_by IN ('user', 'service', 'operator')),
    state         TEXT NOT NULL CHECK (state IN ('running', 'done')),
    runs          BIGINT NOT NULL DEFAULT 1,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ,
    summary       JSONB NOT NULL DEFAULT '{}'::jsonb
);

-- ListActivity pages a user's entries newest first by id.
CREATE INDEX activity_logs_user_id_idx ON activity_logs (user_id, id DESC);
