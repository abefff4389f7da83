-- Rate limits. Per key: overrides of the configured rpm / tpm / concurrency defaults (NULL = the
-- default) and a platform plan (free, pro or custom with its own hourly limit). Per model: an rpm
-- and tpm each key gets on that model. Per user: a membership (lifts the AI generation class).
ALTER TABLE api_keys ADD COLUMN rpm INTEGER;
ALTER TABLE api_keys ADD COLUMN tpm INTEGER;
ALTER TABLE api_keys ADD COLUMN max_concurrency INTEGER;
ALTER TABLE api_keys ADD COLUMN plan TEXT;
ALTER TABLE api_keys ADD COLUMN plan_per_hour INTEGER;
ALTER TABLE models ADD COLUMN rpm INTEGER;
ALTER TABLE models ADD COLUMN tpm INTEGER;
ALTER TABLE users ADD COLUMN membership_type TEXT;
ALTER TABLE users ADD COLUMN membership_expires_at_ms INTEGER;
