-- Uploaded media (images, GIFs, videos up to 512 MB) are kept in 1 MiB chunks, so neither an
-- upload, a download nor a publish holds a whole file in memory. A chunked file's row is
-- written first as pending (`chunks` = -1), then its chunks, then the row is completed
-- (`chunks` > 0, an empty `data`). A pending row a day old is an upload cut by a crash: it is
-- swept with its chunks.
ALTER TABLE files ADD COLUMN chunks BIGINT NOT NULL DEFAULT 0;

CREATE TABLE file_chunks (
    file_id  TEXT    NOT NULL,
    seq      BIGINT  NOT NULL,
    data     BYTEA   NOT NULL,
    PRIMARY KEY (file_id, seq)
);
CREATE INDEX files_pending ON files (created_at_ms) WHERE chunks < 0;
