-- Tollgate schema (SQLite). Money is INTEGER micro-credits; times are INTEGER unix milliseconds.

CREATE TABLE users (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    email           TEXT    NOT NULL UNIQUE,
    role            TEXT    NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    status          TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    balance_micros  INTEGER NOT NULL DEFAULT 0,
    reserved_micros INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    CHECK (reserved_micros >= 0),
    CHECK (balance_micros >= 0)
);

CREATE TABLE api_keys (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL REFERENCES users(id),
    name          TEXT    NOT NULL,
    key_hash      TEXT    NOT NULL UNIQUE,
    key_prefix    TEXT    NOT NULL,
    status        TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    models        TEXT,
    expires_at_ms INTEGER,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX api_keys_user ON api_keys (user_id);

CREATE TABLE channels (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    provider      TEXT    NOT NULL,
    base_url      TEXT    NOT NULL,
    api_key       TEXT    NOT NULL,
    models        TEXT    NOT NULL,
    model_map     TEXT    NOT NULL,
    priority      INTEGER NOT NULL DEFAULT 0,
    weight        INTEGER NOT NULL DEFAULT 1,
    status        TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE models (
    id                           INTEGER PRIMARY KEY AUTOINCREMENT,
    model                        TEXT    NOT NULL UNIQUE,
    input_micros_per_mtok        INTEGER NOT NULL,
    output_micros_per_mtok       INTEGER NOT NULL,
    cached_input_micros_per_mtok INTEGER NOT NULL,
    max_output_tokens            INTEGER,
    price_version                INTEGER NOT NULL DEFAULT 1,
    status                       TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at_ms                INTEGER NOT NULL,
    updated_at_ms                INTEGER NOT NULL
);

-- Every price a model has had; usage records name the version they were charged at.
CREATE TABLE model_prices (
    model_id                     INTEGER NOT NULL REFERENCES models(id),
    version                      INTEGER NOT NULL,
    input_micros_per_mtok        INTEGER NOT NULL,
    output_micros_per_mtok       INTEGER NOT NULL,
    cached_input_micros_per_mtok INTEGER NOT NULL,
    created_at_ms                INTEGER NOT NULL,
    PRIMARY KEY (model_id, version)
);

-- Money held for requests in flight; users.reserved_micros is their sum per user.
CREATE TABLE reservations (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id     TEXT    NOT NULL UNIQUE,
    user_id        INTEGER NOT NULL REFERENCES users(id),
    key_id         INTEGER,
    model          TEXT    NOT NULL,
    amount_micros  INTEGER NOT NULL CHECK (amount_micros >= 0),
    price_version  INTEGER NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);
CREATE INDEX reservations_expiry ON reservations (expires_at_ms);

-- Append-only: every change of users.balance_micros is one row here.
CREATE TABLE ledger_entries (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id              INTEGER NOT NULL REFERENCES users(id),
    kind                 TEXT    NOT NULL,
    amount_micros        INTEGER NOT NULL,
    balance_after_micros INTEGER NOT NULL,
    description          TEXT    NOT NULL,
    request_id           TEXT,
    created_at_ms        INTEGER NOT NULL
);
CREATE INDEX ledger_entries_user ON ledger_entries (user_id, id);
CREATE UNIQUE INDEX ledger_entries_one_charge ON ledger_entries (request_id) WHERE kind = 'charge';

CREATE TABLE usage_records (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id        TEXT    NOT NULL UNIQUE,
    user_id           INTEGER NOT NULL,
    key_id            INTEGER,
    model             TEXT    NOT NULL,
    upstream_model    TEXT,
    channel_id        INTEGER,
    endpoint          TEXT    NOT NULL,
    stream            INTEGER NOT NULL,
    status            TEXT    NOT NULL,
    http_status       INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    reasoning_tokens  INTEGER NOT NULL,
    usage_source      TEXT    NOT NULL,
    reserved_micros   INTEGER NOT NULL,
    cost_micros       INTEGER NOT NULL,
    unbilled_micros   INTEGER NOT NULL,
    price_version     INTEGER,
    latency_ms        INTEGER NOT NULL,
    ttft_ms           INTEGER,
    error             TEXT,
    created_at_ms     INTEGER NOT NULL
);
CREATE INDEX usage_records_user ON usage_records (user_id, id);
