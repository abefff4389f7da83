-- Publishing creations (seed 001) to WeChat Official Accounts (through its API) and to the
-- platforms without a server publishing API (a hand-off package the user posts).
--
-- A user's binding per platform: for WeChat the AppID and the AppSecret (sealed).
CREATE TABLE publish_bindings (
    user_id        BIGINT  NOT NULL REFERENCES users(id),
    platform       TEXT    NOT NULL,
    account_name   TEXT,
    app_id         TEXT,
    secret         TEXT,
    created_at_ms  BIGINT  NOT NULL,
    updated_at_ms  BIGINT  NOT NULL,
    PRIMARY KEY (user_id, platform)
);

-- One access token per WeChat AppID, shared by every instance: one refresher at a time holds
-- the lock; the token is sealed.
CREATE TABLE wechat_tokens (
    app_id          TEXT    PRIMARY KEY,
    access_token    TEXT    NOT NULL DEFAULT '',
    expires_at_ms   BIGINT  NOT NULL DEFAULT 0,
    lock_owner      TEXT,
    lock_until_ms   BIGINT  NOT NULL DEFAULT 0,
    fetches         BIGINT  NOT NULL DEFAULT 0,
    updated_at_ms   BIGINT  NOT NULL
);

-- A creation published to some platforms (seed 001's numeric publish_id), and each platform's
-- state: api platforms (wechat) pending → submitting → publishing → published | failed |
-- unconfirmed, their price held on a publish target (target_id) until then; hand-off ones
-- pending → awaiting_user (a package to paste) → done (marked by the user).
CREATE TABLE creation_publishes (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            BIGINT  NOT NULL REFERENCES users(id),
    creation_id        BIGINT  NOT NULL,
    title              TEXT    NOT NULL,
    scheduled_for_ms   BIGINT,
    created_at_ms      BIGINT  NOT NULL
);
CREATE INDEX creation_publishes_by_user ON creation_publishes (user_id, id);

CREATE TABLE creation_publish_items (
    publish_id     BIGINT  NOT NULL,
    platform       TEXT    NOT NULL,
    mode           TEXT    NOT NULL CHECK (mode IN ('api', 'handoff')),
    status         TEXT    NOT NULL,
    target_id      TEXT,
    job_id         TEXT,
    remote_id      TEXT,
    url            TEXT,
    error          TEXT,
    package        TEXT,
    updated_at_ms  BIGINT  NOT NULL,
    PRIMARY KEY (publish_id, platform)
);
