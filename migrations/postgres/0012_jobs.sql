-- One durable job mechanism for everything deferred (scheduled publishes, video task polls,
-- WeChat publish checks): a row per job, claimed by lease. A claim sets `state` = 'running',
-- names the claimer in `lease_owner` and moves `run_at_ms` to the lease's end, so a job whose
-- instance died is due again when its lease runs out (one index finds both). At most one job
-- per `queue_key` (an account) runs at a time (jobs_one_running). `scheduled_for_ms` is the
-- instant asked for, `effective_at_ms` the one it runs at (after jitter), `started_at_ms` its
-- first claim (lateness = started - effective). `payload` is the kind's own JSON. Times are UTC epoch milliseconds.
CREATE TABLE jobs (
    id               TEXT    PRIMARY KEY,
    kind             TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    user_id          BIGINT,
    queue_key        TEXT,
    priority         BIGINT  NOT NULL DEFAULT 0,
    scheduled_for_ms BIGINT  NOT NULL,
    effective_at_ms  BIGINT  NOT NULL,
    run_at_ms        BIGINT  NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'unconfirmed')),
    attempts         BIGINT  NOT NULL DEFAULT 0,
    max_attempts     BIGINT  NOT NULL,
    lease_owner      TEXT,
    last_error       TEXT,
    result           TEXT,
    payload          TEXT    NOT NULL DEFAULT '{}',
    started_at_ms    BIGINT,
    created_at_ms    BIGINT  NOT NULL,
    updated_at_ms    BIGINT  NOT NULL
);
CREATE INDEX jobs_due ON jobs (run_at_ms) WHERE state IN ('pending', 'running');
CREATE UNIQUE INDEX jobs_one_running ON jobs (queue_key) WHERE state = 'running';
CREATE INDEX jobs_by_subject ON jobs (subject);
CREATE INDEX jobs_by_user ON jobs (user_id, kind, created_at_ms);

-- The video poller moves onto it: each open task is a pending poll.
INSERT INTO jobs (id, kind, subject, user_id, priority, scheduled_for_ms, effective_at_ms, run_at_ms, state,
                  max_attempts, created_at_ms, updated_at_ms)
SELECT 'job_video_' || id, 'video_poll', id, user_id, 0, next_poll_at_ms, next_poll_at_ms, next_poll_at_ms,
       'pending', 0, created_at_ms, updated_at_ms
FROM video_tasks WHERE settled = 0;
