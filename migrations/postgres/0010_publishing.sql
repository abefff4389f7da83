-- Publishing (seed 000): a client's request, each account it goes to, and each post sent.

-- One publish request, kept for the client's Idempotency-Key (a retry gets the first answer)
-- and its answer.
CREATE TABLE publishes (
    id               TEXT PRIMARY KEY,
    user_id          BIGINT  NOT NULL REFERENCES users(id),
    idempotency_key  TEXT,
    request_hash     TEXT    NOT NULL,
    response         TEXT,
    created_at_ms    BIGINT  NOT NULL
);
CREATE UNIQUE INDEX publishes_one_per_key ON publishes (user_id, idempotency_key);

-- One publish to one account. Its id is the request id of its hold (price held before any
-- post is sent; charged once when every post is out, refunded on a definite failure, kept
-- while the outcome is unconfirmed). `status`: posting, published, failed, unconfirmed.
CREATE TABLE publish_targets (
    id             TEXT PRIMARY KEY,
    publish_id     TEXT    NOT NULL REFERENCES publishes(id),
    user_id        BIGINT  NOT NULL REFERENCES users(id),
    account_id     TEXT    NOT NULL,
    platform       TEXT    NOT NULL,
    thread_key     TEXT    NOT NULL,
    status         TEXT    NOT NULL DEFAULT 'posting',
    held_micros    BIGINT  NOT NULL,
    total          BIGINT  NOT NULL,
    published      BIGINT  NOT NULL DEFAULT 0,
    failed_at      BIGINT,
    error_code     TEXT,
    error          TEXT,
    settled        BIGINT  NOT NULL DEFAULT 0,
    charged_micros BIGINT  NOT NULL DEFAULT 0,
    created_at_ms  BIGINT  NOT NULL,
    updated_at_ms  BIGINT  NOT NULL
);
CREATE INDEX publish_targets_by_publish ON publish_targets (publish_id);

-- Every post sent, recorded before its create call (`attempted`), then `published` with the
-- platform's id, or `failed` when it surely was not posted (it may be sent again). A post whose
-- outcome is unknown stays `attempted` and is never sent blindly again. `thread_key` names the
-- thread (a draft on an account), so publishing the same draft again continues after the last
-- published post.
CREATE TABLE published_posts (
    thread_key       TEXT    NOT NULL,
    position         BIGINT  NOT NULL,
    target_id        TEXT    NOT NULL,
    account_id       TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    remote_id        TEXT,
    -- Bluesky: the record's CID (a reply names its root's and parent's).
    remote_cid       TEXT,
    -- The handle the platform dedupes by, chosen before the call (Bluesky's record key).
    client_key       TEXT,
    url              TEXT,
    error            TEXT,
    attempted_at_ms  BIGINT  NOT NULL,
    updated_at_ms    BIGINT  NOT NULL,
    PRIMARY KEY (thread_key, position)
);
