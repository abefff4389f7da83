//! The jobs table: everything deferred, claimed by lease (see `migrations/*/0012_jobs.sql`).
//! A claim is one statement: on PostgreSQL the candidate row is taken `FOR UPDATE SKIP LOCKED`
//! (claimers never wait on each other), on SQLite writes are serialised by the one writer
//! connection. Every change after the claim is fenced by `lease_owner`, so an instance whose
//! lease ran out (and whose job another took) changes nothing.

use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

/// A job as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub subject: String,
    pub user_id: Option<i64>,
    pub queue_key: Option<String>,
    pub priority: i64,
    pub scheduled_for_ms: i64,
    pub effective_at_ms: i64,
    pub run_at_ms: i64,
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub lease_owner: Option<String>,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub payload: String,
    pub started_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

macro_rules! job_columns {
    () => {
        "id, kind, subject, user_id, queue_key, priority, scheduled_for_ms, effective_at_ms, run_at_ms, state, \
         attempts, max_attempts, lease_owner, last_error, result, payload, started_at_ms, created_at_ms, updated_at_ms"
    };
}

/// A job to write.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub subject: &'a str,
    pub user_id: Option<i64>,
    pub queue_key: Option<&'a str>,
    pub priority: i64,
    pub scheduled_for_ms: i64,
    /// When it first runs (the scheduled instant plus its jitter).
    pub effective_at_ms: i64,
    pub max_attempts: i64,
    /// The kind's own JSON.
    pub payload: &'a str,
}

/// Writes a pending job through `$tx` (a transaction or pool of either backend).
macro_rules! insert_job {
    ($tx:expr, $job:expr, $now:expr) => {{
        let job: &$crate::db::jobs::NewJob<'_> = $job;
        sqlx::query(
            "INSERT INTO jobs (id, kind, subject, user_id, queue_key, priority, scheduled_for_ms, effective_at_ms,
                               run_at_ms, state, attempts, max_attempts, payload, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, 'pending', 0, $9, $11, $10, $10)",
        )
        .bind(job.id)
        .bind(job.kind)
        .bind(job.subject)
        .bind(job.user_id)
        .bind(job.queue_key)
        .bind(job.priority)
        .bind(job.scheduled_for_ms)
        .bind(job.effective_at_ms)
        .bind(job.max_attempts)
        .bind($now)
        .bind(job.payload)
        .execute(&mut *$tx)
        .await
    }};
}
pub(crate) use insert_job;

/// Writes one pending job.
pub async fn insert(db: &Db, job: &NewJob<'_>) -> Result<(), sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => {
        let mut c = p.acquire().await?;
        insert_job!(c, job, now).map(|_| ())
    })
}

/// What a claim found.
pub enum Claim {
    Got(Box<Job>),
    /// Nothing due now.
    Nothing,
    /// Another instance took the same account's job at the same moment: try again at once.
    Contended,
}

/// Claims the job most worth running now, for `owner`, until `now + lease_ms`: a pending job
/// that is due or a running one whose lease ran out, the highest priority first and then the
/// earliest, never one whose account already has a job running.
pub async fn claim(db: &Db, owner: &str, lease_ms: i64) -> Result<Claim, sqlx::Error> {
    let now = now_ms();
    // The candidate, then the claim; PostgreSQL skips rows another claimer holds.
    macro_rules! claim_sql {
        ($lock:literal) => {
            concat!(
                "UPDATE jobs SET state = 'running', lease_owner = $1, run_at_ms = $2, attempts = attempts + 1,
                        started_at_ms = COALESCE(started_at_ms, $3), updated_at_ms = $3
                 WHERE id = (SELECT j.id FROM jobs j
                             WHERE j.state IN ('pending', 'running') AND j.run_at_ms <= $3
                               AND (j.queue_key IS NULL OR NOT EXISTS (
                                    SELECT 1 FROM jobs r WHERE r.queue_key = j.queue_key AND r.state = 'running'
                                                          AND r.id <> j.id))
                             ORDER BY j.priority DESC, j.run_at_ms LIMIT 1 ",
                $lock,
                ")
                 RETURNING ",
                job_columns!()
            )
        };
    }
    let got = match db {
        Db::Postgres(p) => {
            sqlx::query_as::<_, Job>(claim_sql!("FOR UPDATE SKIP LOCKED"))
                .bind(owner)
                .bind(now + lease_ms)
                .bind(now)
                .fetch_optional(p)
                .await
        }
        Db::Sqlite { writer, .. } => {
            sqlx::query_as::<_, Job>(claim_sql!(""))
                .bind(owner)
                .bind(now + lease_ms)
                .bind(now)
                .fetch_optional(writer)
                .await
        }
    };
    match got {
        Ok(Some(job)) => Ok(Claim::Got(Box::new(job))),
        Ok(None) => Ok(Claim::Nothing),
        Err(e) if super::is_unique_violation(&e) => Ok(Claim::Contended),
        Err(e) => Err(e),
    }
}

/// Extends `owner`'s lease on a running job to `until_ms`; false when it is no longer theirs.
pub async fn renew(db: &Db, id: &str, owner: &str, until_ms: i64) -> Result<bool, sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE jobs SET run_at_ms = $3 WHERE id = $1 AND lease_owner = $2 AND state = 'running'")
        .bind(id)
        .bind(owner)
        .bind(until_ms)
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// Ends `owner`'s running job in `state` (`succeeded`, `failed`, `cancelled`, `unconfirmed`);
/// `error` replaces its last error when given (a success keeps the last retry's).
pub async fn end(
    db: &Db,
    id: &str,
    owner: &str,
    state: &str,
    result: Option<&str>,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE jobs SET state = $3, result = $4, last_error = COALESCE($5, last_error), lease_owner = NULL,
                updated_at_ms = $6
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'")
        .bind(id)
        .bind(owner)
        .bind(state)
        .bind(result)
        .bind(error)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// Gives `owner`'s running job back as pending, due at `run_at_ms` (a retry, or the next step
/// of a job that runs in steps), with `error` as its last error.
pub async fn again(
    db: &Db,
    id: &str,
    owner: &str,
    run_at_ms: i64,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE jobs SET state = 'pending', run_at_ms = $3, last_error = COALESCE($4, last_error), lease_owner = NULL,
                updated_at_ms = $5
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'")
        .bind(id)
        .bind(owner)
        .bind(run_at_ms)
        .bind(error)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// Moves a pending job's next run to `at_ms`.
pub async fn reschedule(db: &Db, id: &str, at_ms: i64) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE jobs SET run_at_ms = $2, updated_at_ms = $3 WHERE id = $1 AND state = 'pending'")
        .bind(id)
        .bind(at_ms)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

/// Cancels a job that has not started (compare-and-set on `pending`): true when it did.
pub async fn cancel_pending(db: &Db, id: &str, why: &str) -> Result<bool, sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE jobs SET state = 'cancelled', last_error = $2, updated_at_ms = $3 WHERE id = $1 AND state = 'pending'")
        .bind(id)
        .bind(why)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// One job.
pub async fn get(db: &Db, id: &str) -> Result<Option<Job>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Job>(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(p)
        .await)
}

/// How many jobs are due since before `before_ms` and not running on a live lease (overdue).
pub async fn overdue(db: &Db, before_ms: i64) -> Result<i64, sqlx::Error> {
    read_pool!(db, p => sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running') AND run_at_ms < $1")
        .bind(before_ms)
        .fetch_one(p)
        .await)
}

/// When the next job falls due (or a lease runs out), if any is open.
pub async fn next_due(db: &Db) -> Result<Option<i64>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_scalar::<_, Option<i64>>(
        "SELECT MIN(run_at_ms) FROM jobs WHERE state IN ('pending', 'running')")
        .fetch_one(p)
        .await)
}

/// A scheduled publish as listed: its job, its target and its draft.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Schedule {
    pub id: String,
    pub state: String,
    pub priority: i64,
    pub attempts: i64,
    pub scheduled_for_ms: i64,
    pub effective_at_ms: i64,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub created_at_ms: i64,
    pub target_id: String,
    pub account_id: String,
    pub platform: String,
    pub thread_key: String,
    pub target_status: String,
    pub draft_id: Option<String>,
    pub draft_title: Option<String>,
}

/// The user's scheduled publishes of `kind` (of one thread prefix, a draft, if given), the
/// soonest first, at most `limit`; only open ones unless `all`.
pub async fn schedules(
    db: &Db,
    user_id: i64,
    kind: &str,
    thread_prefix: Option<&str>,
    all: bool,
    limit: i64,
) -> Result<Vec<Schedule>, sqlx::Error> {
    let pattern = thread_prefix.map(|p| format!("{p}:%"));
    read_pool!(db, p => sqlx::query_as::<_, Schedule>(
        "SELECT j.id, j.state, j.priority, j.attempts, j.scheduled_for_ms, j.effective_at_ms, j.last_error, j.result,
                j.created_at_ms, t.id AS target_id, t.account_id, t.platform, t.thread_key, t.status AS target_status,
                d.id AS draft_id, d.title AS draft_title
         FROM jobs j JOIN publish_targets t ON t.id = j.subject
              LEFT JOIN drafts d ON t.thread_key = d.id || ':' || t.account_id
         WHERE j.kind = $2 AND j.user_id = $1 AND ($3 IS NULL OR t.thread_key LIKE $3)
           AND ($4 OR j.state IN ('pending', 'running'))
         ORDER BY j.effective_at_ms, j.id LIMIT $5")
        .bind(user_id)
        .bind(kind)
        .bind(pattern)
        .bind(all)
        .bind(limit)
        .fetch_all(p)
        .await)
}
