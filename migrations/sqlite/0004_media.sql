-- Issue 5: more token kinds, media prices, the model registry's fields, channel health and
-- video tasks.

-- Usage: prompt tokens written to a provider's cache (Anthropic), and the units of media
-- endpoints (images returned, video seconds billed).
ALTER TABLE usage_records ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN units INTEGER NOT NULL DEFAULT 0;
CREATE INDEX usage_records_time ON usage_records (created_at_ms);

-- Models: the price of a cache write per 1M tokens (NULL = 1.25 × input), a flat price per
-- request (the registry's credits_cost), per-image prices (a default and a JSON map of
-- "size" or "size/quality" to micro-credits), a per-second video price, and the registry's
-- display name, vendor label and config.
ALTER TABLE models ADD COLUMN cache_write_micros_per_mtok INTEGER;
ALTER TABLE models ADD COLUMN request_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE models ADD COLUMN image_micros INTEGER;
ALTER TABLE models ADD COLUMN image_prices TEXT;
ALTER TABLE models ADD COLUMN video_second_micros INTEGER;
ALTER TABLE models ADD COLUMN display_name TEXT;
ALTER TABLE models ADD COLUMN vendor TEXT;
ALTER TABLE models ADD COLUMN config TEXT;

-- Channels: why a channel was disabled automatically (an upstream 401/403), and its last error.
ALTER TABLE channels ADD COLUMN disabled_reason TEXT;
ALTER TABLE channels ADD COLUMN last_error TEXT;
ALTER TABLE channels ADD COLUMN last_error_at_ms INTEGER;

-- Video generation tasks. The price is held as a ledger debit ('hold') at submit; the one
-- settlement releases it ('release') and charges what the provider delivered ('charge'),
-- guarded by `settled` and the unique index below. Pollers on any instance claim a task by
-- taking its lease.
CREATE TABLE video_tasks (
    id                TEXT    PRIMARY KEY,
    user_id           INTEGER NOT NULL REFERENCES users(id),
    key_id            INTEGER,
    model             TEXT    NOT NULL,
    channel_id        INTEGER,
    upstream_model    TEXT,
    upstream_task_id  TEXT,
    prompt            TEXT    NOT NULL,
    seconds           INTEGER NOT NULL,
    size              TEXT,
    aspect_ratio      TEXT,
    status            TEXT    NOT NULL CHECK (status IN ('queued', 'in_progress', 'completed', 'failed')),
    progress          INTEGER NOT NULL DEFAULT 0,
    held_micros       INTEGER NOT NULL,
    second_micros     INTEGER NOT NULL,
    request_micros    INTEGER NOT NULL,
    price_version     INTEGER NOT NULL,
    billed_seconds    INTEGER,
    cost_micros       INTEGER,
    result_url        TEXT,
    error             TEXT,
    settled           INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_until_ms    INTEGER NOT NULL DEFAULT 0,
    next_poll_at_ms   INTEGER NOT NULL,
    expires_at_ms     INTEGER NOT NULL,
    created_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL,
    completed_at_ms   INTEGER
);
CREATE INDEX video_tasks_user ON video_tasks (user_id, created_at_ms);
CREATE INDEX video_tasks_open ON video_tasks (settled, next_poll_at_ms);
CREATE UNIQUE INDEX ledger_entries_one_release ON ledger_entries (request_id) WHERE kind = 'release';
