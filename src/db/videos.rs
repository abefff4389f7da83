//! Video generation tasks and their money. Submitting a task debits its price at once (a
//! ledger `hold`, in the same transaction as the task row), so the money survives restarts; the
//! one settlement (guarded by `settled = 0`, and by a unique index on the `release` entry)
//! gives the hold back (`release`) and charges what was delivered (`charge`), with the usage
//! record. Pollers claim tasks by taking a lease, so several instances never poll one task at
//! the same moment and a dead instance's tasks are picked up after the lease runs out.

use super::billing::{ReserveError, UsageRecord, settle_hold, take_hold};
use super::creations::{NewCreation, bind_creation, creation_insert};
use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

/// A task as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VideoTask {
    pub id: String,
    pub user_id: i64,
    pub key_id: Option<i64>,
    pub model: String,
    pub channel_id: Option<i64>,
    pub upstream_model: Option<String>,
    pub upstream_task_id: Option<String>,
    pub prompt: String,
    pub seconds: i64,
    pub size: Option<String>,
    pub aspect_ratio: Option<String>,
    pub status: String,
    pub progress: i64,
    pub held_micros: i64,
    pub second_micros: i64,
    pub request_micros: i64,
    pub price_version: i64,
    pub billed_seconds: Option<i64>,
    pub cost_micros: Option<i64>,
    pub result_url: Option<String>,
    pub error: Option<String>,
    pub settled: i64,
    pub lease_owner: Option<String>,
    pub lease_until_ms: i64,
    pub next_poll_at_ms: i64,
    pub expires_at_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub completed_at_ms: Option<i64>,
    /// A task made through the platform route: who pays (`credits` or `membership`), and its
    /// file is stored and saved as a `video` creation when it completes.
    pub keep_as: Option<String>,
    /// The stored file of a kept task (set by its settlement).
    pub file_id: Option<String>,
    pub creation_id: Option<i64>,
}

/// The columns of a [`VideoTask`].
macro_rules! columns {
    () => {
        "id, user_id, key_id, model, channel_id, upstream_model, upstream_task_id, prompt, seconds, size, \
         aspect_ratio, status, progress, held_micros, second_micros, request_micros, price_version, billed_seconds, \
         cost_micros, result_url, error, settled, lease_owner, lease_until_ms, next_poll_at_ms, expires_at_ms, \
         created_at_ms, updated_at_ms, completed_at_ms, keep_as, file_id, creation_id"
    };
}

/// Writes a new task and debits its hold (`task.held_micros`) in one transaction.
pub async fn create_with_hold(db: &Db, t: &VideoTask) -> Result<(), ReserveError> {
    let now = now_ms();
    write_pool!(db, p => {
        let mut tx = p.begin().await?;
        let description = format!("videos {} (held until the task ends)", t.model);
        take_hold!(tx, t.user_id, t.held_micros, &t.id, &description, now)?;
        sqlx::query(concat!(
            "INSERT INTO video_tasks (", columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
             $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32)"
        ))
        .bind(&t.id)
        .bind(t.user_id)
        .bind(t.key_id)
        .bind(&t.model)
        .bind(t.channel_id)
        .bind(&t.upstream_model)
        .bind(&t.upstream_task_id)
        .bind(&t.prompt)
        .bind(t.seconds)
        .bind(&t.size)
        .bind(&t.aspect_ratio)
        .bind(&t.status)
        .bind(t.progress)
        .bind(t.held_micros)
        .bind(t.second_micros)
        .bind(t.request_micros)
        .bind(t.price_version)
        .bind(t.billed_seconds)
        .bind(t.cost_micros)
        .bind(&t.result_url)
        .bind(&t.error)
        .bind(t.settled)
        .bind(&t.lease_owner)
        .bind(t.lease_until_ms)
        .bind(t.next_poll_at_ms)
        .bind(t.expires_at_ms)
        .bind(t.created_at_ms)
        .bind(t.updated_at_ms)
        .bind(t.completed_at_ms)
        .bind(&t.keep_as)
        .bind(&t.file_id)
        .bind(t.creation_id)
        .execute(&mut *tx)
        .await?;
        // Its poll job, due when the submission's lease runs out (the submission makes it due
        // at once when the provider has the task).
        let job_id = crate::gateway::videos::poll_job_id(&t.id);
        let job = crate::db::jobs::NewJob {
            id: &job_id,
            kind: crate::gateway::videos::POLL_KIND,
            subject: &t.id,
            user_id: Some(t.user_id),
            queue_key: None,
            priority: 0,
            scheduled_for_ms: t.lease_until_ms,
            effective_at_ms: t.lease_until_ms,
            max_attempts: 0,
            payload: "{}",
        };
        crate::db::jobs::insert_job!(tx, &job, now)?;
        tx.commit().await?;
        Ok(())
    })
}

/// A task by id.
pub async fn get(db: &Db, id: &str) -> Result<Option<VideoTask>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, VideoTask>(concat!("SELECT ", columns!(), " FROM video_tasks WHERE id = $1"))
        .bind(id)
        .fetch_optional(p)
        .await)
}

/// Up to `limit` of a user's tasks, newest first (or oldest first), strictly after `cursor`
/// (`(created_at_ms, id)` of the last one seen).
pub async fn list_for_user(
    db: &Db,
    user_id: i64,
    cursor: Option<(i64, String)>,
    limit: i64,
    ascending: bool,
) -> Result<Vec<VideoTask>, sqlx::Error> {
    let (at, id) = cursor.unwrap_or(if ascending {
        (i64::MIN, String::new())
    } else {
        (i64::MAX, String::new())
    });
    let sql = if ascending {
        concat!(
            "SELECT ",
            columns!(),
            " FROM video_tasks WHERE user_id = $1
                 AND (created_at_ms > $2 OR (created_at_ms = $2 AND id > $3))
                 ORDER BY created_at_ms, id LIMIT $4"
        )
    } else {
        concat!(
            "SELECT ",
            columns!(),
            " FROM video_tasks WHERE user_id = $1
                 AND (created_at_ms < $2 OR (created_at_ms = $2 AND id < $3))
                 ORDER BY created_at_ms DESC, id DESC LIMIT $4"
        )
    };
    read_pool!(db, p => sqlx::query_as::<_, VideoTask>(sql)
        .bind(user_id)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(p)
        .await)
}

/// Records where the provider keeps the task (after its create call answered).
pub async fn set_upstream(
    db: &Db,
    id: &str,
    channel_id: i64,
    upstream_model: &str,
    upstream_task_id: &str,
) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE video_tasks SET channel_id = $2, upstream_model = $3, upstream_task_id = $4, updated_at_ms = $5
         WHERE id = $1",
    )
    .bind(id)
    .bind(channel_id)
    .bind(upstream_model)
    .bind(upstream_task_id)
    .bind(now_ms())
    .execute(p)
    .await
    .map(|_| ()))
}

/// Stores a poll's progress and frees the lease until `next_poll_at_ms`.
pub async fn record_progress(
    db: &Db,
    id: &str,
    status: &str,
    progress: i64,
    next_poll_at_ms: i64,
) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE video_tasks SET status = $2, progress = $3, next_poll_at_ms = $4, lease_owner = NULL,
                lease_until_ms = 0, updated_at_ms = $5
         WHERE id = $1 AND settled = 0",
    )
    .bind(id)
    .bind(status)
    .bind(progress)
    .bind(next_poll_at_ms)
    .bind(now_ms())
    .execute(p)
    .await
    .map(|_| ()))
}

/// How a task ended.
pub struct Outcome<'a> {
    /// `completed` or `failed`.
    pub status: &'a str,
    pub billed_seconds: i64,
    pub result_url: Option<&'a str>,
    pub error: Option<&'a str>,
    /// A kept task's stored file and the creation to save with it (its `credits_micros` is
    /// set to what the settlement charges).
    pub kept: Option<Kept<'a>>,
}

/// The file a kept task delivered, and its creation.
pub struct Kept<'a> {
    pub file_id: &'a str,
    pub creation: NewCreation<'a>,
}

/// Settles a task exactly once: marks it ended, releases the hold, charges the record's cost
/// (capped by the hold, [`UsageRecord::chargeable`]), writes the usage record and, for a kept
/// task, its creation, in one transaction. The amount charged, or `None` when it had been settled before.
pub async fn settle(
    db: &Db,
    task: &VideoTask,
    outcome: &Outcome<'_>,
    record: &UsageRecord,
) -> Result<Option<i64>, sqlx::Error> {
    let now = now_ms();
    // The hold is back in the balance when the charge is taken: it always fits.
    let cost = record.chargeable(task.held_micros);
    let result: Result<Option<i64>, sqlx::Error> = write_pool!(db, p => {
        let mut tx = p.begin().await?;
        let ended = sqlx::query(
            "UPDATE video_tasks SET settled = 1, status = $2, progress = CASE WHEN $2 = 'completed' THEN 100 ELSE progress END,
                    billed_seconds = $3, cost_micros = $4, result_url = $5, error = $6, completed_at_ms = $7,
                    updated_at_ms = $7, lease_owner = NULL, lease_until_ms = 0
             WHERE id = $1 AND settled = 0",
        )
        .bind(&task.id)
        .bind(outcome.status)
        .bind(outcome.billed_seconds)
        .bind(cost)
        .bind(outcome.result_url)
        .bind(outcome.error)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if ended == 0 {
            return Ok(None);
        }
        let what = format!("videos {} ({})", task.model, outcome.status);
        settle_hold!(tx, task.user_id, task.held_micros, cost, &task.id, &what, now, record)?;
        if let Some(kept) = &outcome.kept {
            let creation = NewCreation { credits_micros: cost, file_id: Some(kept.file_id), ..kept.creation.clone() };
            let creation_id: i64 = bind_creation!(
                sqlx::query_scalar(concat!(creation_insert!(), " RETURNING id")), now, &creation)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("UPDATE video_tasks SET file_id = $2, creation_id = $3 WHERE id = $1")
                .bind(&task.id)
                .bind(kept.file_id)
                .bind(creation_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(cost))
    });
    match result {
        Err(e) if super::is_unique_violation(&e) => Ok(None),
        other => other,
    }
}

/// Unsettled tasks (for the open-tasks gauge).
pub async fn count_open(db: &Db) -> Result<i64, sqlx::Error> {
    read_pool!(db, p => sqlx::query_scalar("SELECT COUNT(*) FROM video_tasks WHERE settled = 0")
        .fetch_one(p)
        .await)
}
