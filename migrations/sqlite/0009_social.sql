-- Publishing (seed 000): connected social accounts, social sets grouping them, and drafts.

-- A connected account at a platform. Its tokens are sealed (secrets purpose "social token");
-- `instance` is the Mastodon instance or Bluesky PDS it lives on; `char_limit` the most a post
-- may count there (a Mastodon instance's own limit). `status`: active, needs_reauth (the
-- platform refused its token) or disconnected.
CREATE TABLE social_accounts (
    id                   TEXT PRIMARY KEY,
    user_id              INTEGER NOT NULL REFERENCES users(id),
    platform             TEXT    NOT NULL,
    platform_uid         TEXT    NOT NULL,
    username             TEXT    NOT NULL,
    display_name         TEXT,
    avatar_url           TEXT,
    instance             TEXT,
    char_limit           INTEGER,
    access_token         TEXT    NOT NULL DEFAULT '',
    refresh_token        TEXT    NOT NULL DEFAULT '',
    token_expires_at_ms  INTEGER,
    status               TEXT    NOT NULL DEFAULT 'active',
    -- One token refresh at a time per account, across instances: a lease.
    refresh_lock_owner   TEXT,
    refresh_lock_until_ms INTEGER NOT NULL DEFAULT 0,
    created_at_ms        INTEGER NOT NULL,
    updated_at_ms        INTEGER NOT NULL
);
CREATE UNIQUE INDEX social_accounts_one_per_uid ON social_accounts (user_id, platform, platform_uid);

-- A named group of a user's accounts (seed 000's social set).
CREATE TABLE social_sets (
    id             TEXT PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users(id),
    name           TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);
CREATE INDEX social_sets_by_user ON social_sets (user_id, created_at_ms);

CREATE TABLE social_set_accounts (
    social_set_id  TEXT NOT NULL REFERENCES social_sets(id) ON DELETE CASCADE,
    account_id     TEXT NOT NULL REFERENCES social_accounts(id) ON DELETE CASCADE,
    added_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (social_set_id, account_id)
);

-- A draft: its items (`tweets`, a JSON array of sanitised HTML items with their counts) and
-- where it is meant to go.
CREATE TABLE drafts (
    id                    TEXT PRIMARY KEY,
    user_id               INTEGER NOT NULL REFERENCES users(id),
    social_set_id         TEXT REFERENCES social_sets(id) ON DELETE SET NULL,
    title                 TEXT    NOT NULL,
    status                TEXT    NOT NULL DEFAULT 'draft',
    scheduled_for_ms      INTEGER,
    selected_account_ids  TEXT    NOT NULL DEFAULT '[]',
    template_id           TEXT,
    tweets                TEXT    NOT NULL,
    created_at_ms         INTEGER NOT NULL,
    updated_at_ms         INTEGER NOT NULL
);
CREATE INDEX drafts_by_user ON drafts (user_id, created_at_ms);

-- Connecting an account (seed 003's polled session): started by the user, ended by the
-- platform's callback (tied to it by the single-use `state`), polled until completed or failed.
-- `code_verifier` (PKCE) and `pending_tokens` (tokens awaiting an account selection) are sealed.
CREATE TABLE social_auth_sessions (
    id                  TEXT PRIMARY KEY,
    user_id             INTEGER NOT NULL REFERENCES users(id),
    platform            TEXT    NOT NULL,
    state               TEXT    NOT NULL UNIQUE,
    code_verifier       TEXT    NOT NULL DEFAULT '',
    mode                TEXT    NOT NULL DEFAULT 'add_to_existing',
    social_set_id       TEXT,
    follow_on_x         INTEGER NOT NULL DEFAULT 0,
    instance            TEXT,
    status              TEXT    NOT NULL DEFAULT 'pending',
    error_code          INTEGER,
    error_message       TEXT,
    requires_selection  INTEGER NOT NULL DEFAULT 0,
    selectable          TEXT    NOT NULL DEFAULT '[]',
    pending_tokens      TEXT    NOT NULL DEFAULT '',
    account_ids         TEXT    NOT NULL DEFAULT '[]',
    used_at_ms          INTEGER,
    expires_at_ms       INTEGER NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL
);
CREATE INDEX social_auth_sessions_by_user ON social_auth_sessions (user_id, created_at_ms);

-- The app Tollgate registered on each Mastodon instance (once per instance and callback; its
-- secret sealed).
CREATE TABLE mastodon_apps (
    instance       TEXT    NOT NULL,
    redirect_uri   TEXT    NOT NULL,
    client_id      TEXT    NOT NULL,
    client_secret  TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (instance, redirect_uri)
);
