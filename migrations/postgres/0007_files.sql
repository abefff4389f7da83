-- Files Tollgate made or fetched (generated images, decks, videos), kept in the database so that
-- every instance serves a file any of them stored. Downloads go through signed, expiring URLs.
CREATE TABLE files (
    id             TEXT PRIMARY KEY,
    user_id        BIGINT  NOT NULL REFERENCES users(id),
    kind           TEXT    NOT NULL,
    content_type   TEXT    NOT NULL,
    size_bytes     BIGINT  NOT NULL,
    data           BYTEA   NOT NULL,
    created_at_ms  BIGINT  NOT NULL
);

ALTER TABLE creations ADD COLUMN file_id TEXT REFERENCES files(id);
