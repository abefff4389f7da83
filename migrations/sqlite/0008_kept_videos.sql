-- Videos made through the platform route (POST /api/v1/video/generate) are kept: when the
-- provider finishes, Tollgate fetches the file, stores it in `files` and saves a `video`
-- creation, in the settlement that charges for it. `keep_as` names who pays ('credits' or
-- 'membership'); NULL for tasks made through the OpenAI or aggregator routes.
ALTER TABLE video_tasks ADD COLUMN keep_as TEXT;
ALTER TABLE video_tasks ADD COLUMN file_id TEXT;
ALTER TABLE video_tasks ADD COLUMN creation_id INTEGER;

-- How a usage record was paid: from the balance, or by a membership (seed 001: members use
-- their membership benefits first, and the usage record says so).
ALTER TABLE usage_records ADD COLUMN paid_by TEXT NOT NULL DEFAULT 'credits';
