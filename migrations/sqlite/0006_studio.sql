-- The studio's writing tools: one row per tool type (the defaults are written at startup when a
-- row is missing; admins change price, default model, templates and whether it is offered).
CREATE TABLE writing_tools (
    tool_type            TEXT PRIMARY KEY,
    name                 TEXT    NOT NULL,
    description          TEXT    NOT NULL,
    credits_cost_micros  INTEGER NOT NULL,
    model                TEXT,
    system_prompt        TEXT    NOT NULL,
    user_template        TEXT    NOT NULL,
    enabled              INTEGER NOT NULL DEFAULT 1,
    updated_at_ms        INTEGER NOT NULL
);

-- What a user made (writing, image, video, ppt). `request_id` ties a generated one to its usage
-- record; `credits_micros` is what it was charged, `upstream_cost_micros` what its tokens cost
-- at the model's token prices (revenue against upstream spend, per tool).
CREATE TABLE creations (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id               INTEGER NOT NULL REFERENCES users(id),
    kind                  TEXT    NOT NULL,
    tool_type             TEXT,
    title                 TEXT    NOT NULL,
    content               TEXT    NOT NULL,
    model                 TEXT,
    request_id            TEXT UNIQUE,
    credits_micros        INTEGER NOT NULL DEFAULT 0,
    upstream_cost_micros  INTEGER NOT NULL DEFAULT 0,
    paid_by               TEXT    NOT NULL DEFAULT 'credits',
    created_at_ms         INTEGER NOT NULL,
    updated_at_ms         INTEGER NOT NULL
);
CREATE INDEX creations_by_user ON creations (user_id, kind, id);
