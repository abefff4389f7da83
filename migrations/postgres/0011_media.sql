-- Uploaded media (images, GIFs, videos up to 512 MB) are kept in 1 MiB chunks, so neither an
-- upload, a download nor a publish holds a whole file in memory. A chunked file's row has
-- `chunks` > 0 and an empty `data`; the chunks are written first, the row last.
ALTER TABLE files ADD COLUMN chunks BIGINT NOT NULL DEFAULT 0;

CREATE TABLE file_chunks (
    file_id  TEXT    NOT NULL,
    seq      BIGINT  NOT NULL,
    data     BYTEA   NOT NULL,
    PRIMARY KEY (file_id, seq)
);
