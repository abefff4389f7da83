//! Publishes, their targets (one per account, each with a durable hold) and every post sent.

use super::billing::{ReserveError, UsageRecord, settle_hold, take_hold};
use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

/// A publish request as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Publish {
    pub id: String,
    pub user_id: i64,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub response: Option<String>,
    pub created_at_ms: i64,
}

/// Records a new publish; with an idempotency key already used by this user, the earlier one
/// instead (`Err` holds it).
pub async fn begin(
    db: &Db,
    id: &str,
    user_id: i64,
    key: Option<&str>,
    hash: &str,
) -> Result<Result<(), Publish>, sqlx::Error> {
    let inserted = write_pool!(db, p => sqlx::query(
        "INSERT INTO publishes (id, user_id, idempotency_key, request_hash, created_at_ms)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, idempotency_key) DO NOTHING")
        .bind(id)
        .bind(user_id)
        .bind(key)
        .bind(hash)
        .bind(now_ms())
        .execute(p)
        .await?
        .rows_affected());
    if inserted == 1 {
        return Ok(Ok(()));
    }
    let earlier = read_pool!(db, p => sqlx::query_as::<_, Publish>(
        "SELECT id, user_id, idempotency_key, request_hash, response, created_at_ms FROM publishes
         WHERE user_id = $1 AND idempotency_key = $2")
        .bind(user_id)
        .bind(key)
        .fetch_one(p)
        .await)?;
    Ok(Err(earlier))
}

/// Stores a publish's answer (what a retry with its key gets).
pub async fn finish(db: &Db, id: &str, response: &str) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query("UPDATE publishes SET response = $2 WHERE id = $1")
        .bind(id)
        .bind(response)
        .execute(p)
        .await
        .map(|_| ()))
}

/// One publish to one account, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Target {
    pub id: String,
    pub publish_id: String,
    pub user_id: i64,
    pub account_id: String,
    pub platform: String,
    pub thread_key: String,
    pub status: String,
    pub held_micros: i64,
    pub total: i64,
    pub published: i64,
    pub failed_at: Option<i64>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub settled: i64,
    pub charged_micros: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

macro_rules! target_columns {
    () => {
        "id, publish_id, user_id, account_id, platform, thread_key, status, held_micros, total, published, \
         failed_at, error_code, error, settled, charged_micros, created_at_ms, updated_at_ms"
    };
}

/// Writes a new target and takes its hold (`held_micros`) in one transaction, with the job
/// that publishes it later if it is scheduled.
pub async fn create_target(
    db: &Db,
    t: &Target,
    description: &str,
    job: Option<&super::jobs::NewJob<'_>>,
) -> Result<(), ReserveError> {
    create_targets(db, &[(t, job)], description).await
}

/// Writes targets, each with its hold and its job if it has one, all in one transaction: all
/// are written or none (a balance that does not cover the last leaves no hold of the first).
pub async fn create_targets(
    db: &Db,
    targets: &[(&Target, Option<&super::jobs::NewJob<'_>>)],
    description: &str,
) -> Result<(), ReserveError> {
    let now = now_ms();
    write_pool!(db, p => {
        let mut tx = p.begin().await?;
        for (t, job) in targets {
            take_hold!(tx, t.user_id, t.held_micros, &t.id, description, now)?;
            sqlx::query(concat!("INSERT INTO publish_targets (", target_columns!(), ")
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0, 0, $14, $14)"))
                .bind(&t.id)
                .bind(&t.publish_id)
                .bind(t.user_id)
                .bind(&t.account_id)
                .bind(&t.platform)
                .bind(&t.thread_key)
                .bind(&t.status)
                .bind(t.held_micros)
                .bind(t.total)
                .bind(t.published)
                .bind(t.failed_at)
                .bind(&t.error_code)
                .bind(&t.error)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if let Some(job) = job {
                super::jobs::insert_job!(tx, *job, now)?;
            }
        }
        tx.commit().await?;
        Ok(())
    })
}

/// Target `id`, whoever's it is.
pub async fn target_by_id(db: &Db, id: &str) -> Result<Option<Target>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Target>(concat!(
        "SELECT ", target_columns!(), " FROM publish_targets WHERE id = $1"))
        .bind(id)
        .fetch_optional(p)
        .await)
}

/// Moves a scheduled target from `from` (`scheduled`) to `to` (`posting` when its job starts
/// it, `cancelled` when the user cancels it) if nobody moved it first: exactly one of a
/// cancel and a start racing wins.
pub async fn move_scheduled(
    db: &Db,
    id: &str,
    to: &str,
    total: Option<i64>,
) -> Result<bool, sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE publish_targets SET status = $2, total = COALESCE($3, total), updated_at_ms = $4
         WHERE id = $1 AND status = 'scheduled' AND settled = 0")
        .bind(id)
        .bind(to)
        .bind(total)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// The user's target `id`.
pub async fn target(db: &Db, user_id: i64, id: &str) -> Result<Option<Target>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Target>(concat!(
        "SELECT ", target_columns!(), " FROM publish_targets WHERE id = $1 AND user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(p)
        .await)
}

/// How a target ended (or stands).
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub status: &'a str,
    pub published: i64,
    pub failed_at: Option<i64>,
    pub error_code: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// Settles a target exactly once: records how it ended, releases its hold, charges `record`'s
/// cost (capped by the hold) and writes the usage record, in one transaction. What was
/// charged, or `None` when it had been settled before.
pub async fn settle_target(
    db: &Db,
    t: &Target,
    end: &Progress<'_>,
    record: &UsageRecord,
) -> Result<Option<i64>, sqlx::Error> {
    let now = now_ms();
    let cost = record.chargeable(t.held_micros);
    let result: Result<Option<i64>, sqlx::Error> = write_pool!(db, p => {
        let mut tx = p.begin().await?;
        let ended = sqlx::query(
            "UPDATE publish_targets SET settled = 1, status = $2, published = $3, failed_at = $4, error_code = $5,
                    error = $6, charged_micros = $7, updated_at_ms = $8
             WHERE id = $1 AND settled = 0")
            .bind(&t.id)
            .bind(end.status)
            .bind(end.published)
            .bind(end.failed_at)
            .bind(end.error_code)
            .bind(end.error)
            .bind(cost)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if ended == 0 {
            return Ok(None);
        }
        let what = format!("publish to {} ({})", t.platform, end.status);
        settle_hold!(tx, t.user_id, t.held_micros, cost, &t.id, &what, now, record)?;
        tx.commit().await?;
        Ok(Some(cost))
    });
    match result {
        Err(e) if super::is_unique_violation(&e) => Ok(None),
        other => other,
    }
}

/// Leaves a target open (its hold kept) in `status` (`unconfirmed`).
pub async fn hold_open(db: &Db, id: &str, end: &Progress<'_>) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE publish_targets SET status = $2, published = $3, failed_at = $4, error_code = $5, error = $6,
                updated_at_ms = $7 WHERE id = $1 AND settled = 0")
        .bind(id)
        .bind(end.status)
        .bind(end.published)
        .bind(end.failed_at)
        .bind(end.error_code)
        .bind(end.error)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

/// One post as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Post {
    pub thread_key: String,
    pub position: i64,
    pub target_id: String,
    pub account_id: String,
    pub status: String,
    pub remote_id: Option<String>,
    pub remote_cid: Option<String>,
    pub client_key: Option<String>,
    pub url: Option<String>,
    pub error: Option<String>,
    pub attempted_at_ms: i64,
    pub updated_at_ms: i64,
}

/// The posts of a thread, in order.
pub async fn posts(db: &Db, thread_key: &str) -> Result<Vec<Post>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Post>(
        "SELECT thread_key, position, target_id, account_id, status, remote_id, remote_cid, client_key, url, error,
                attempted_at_ms, updated_at_ms FROM published_posts WHERE thread_key = $1 ORDER BY position")
        .bind(thread_key)
        .fetch_all(p)
        .await)
}

/// Records that post `position` of a thread is about to be sent by `target_id` (with the
/// platform dedupe handle `client_key`, if it has one): true when this caller may send it (it
/// was never sent, or surely failed); false when another has it (sent, being sent, or of
/// unknown outcome).
pub async fn attempt(
    db: &Db,
    thread_key: &str,
    position: i64,
    target_id: &str,
    account_id: &str,
    client_key: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => sqlx::query(
        "INSERT INTO published_posts (thread_key, position, target_id, account_id, status, client_key, attempted_at_ms,
                                      updated_at_ms)
         VALUES ($1, $2, $3, $4, 'attempted', $6, $5, $5)
         ON CONFLICT (thread_key, position) DO UPDATE SET status = 'attempted', target_id = excluded.target_id,
             client_key = excluded.client_key, error = NULL, attempted_at_ms = excluded.attempted_at_ms,
             updated_at_ms = excluded.updated_at_ms
         WHERE published_posts.status = 'failed'")
        .bind(thread_key)
        .bind(position)
        .bind(target_id)
        .bind(account_id)
        .bind(now)
        .bind(client_key)
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// Where a post ended up at its platform.
#[derive(Debug, Clone, Copy, Default)]
pub struct Remote<'a> {
    pub id: Option<&'a str>,
    pub cid: Option<&'a str>,
    pub url: Option<&'a str>,
}

/// Ends an attempted post: `published` (where it is) or `failed`.
pub async fn end_post(
    db: &Db,
    thread_key: &str,
    position: i64,
    status: &str,
    remote: Remote<'_>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE published_posts SET status = $3, remote_id = COALESCE($4, remote_id), url = COALESCE($5, url),
                error = $6, updated_at_ms = $7, remote_cid = COALESCE($8, remote_cid)
         WHERE thread_key = $1 AND position = $2 AND status = 'attempted'")
        .bind(thread_key)
        .bind(position)
        .bind(status)
        .bind(remote.id)
        .bind(remote.url)
        .bind(error)
        .bind(now_ms())
        .bind(remote.cid)
        .execute(p)
        .await
        .map(|_| ()))
}

/// Targets still `posting` that were last touched before `before_ms` (their process died).
pub async fn stalled(db: &Db, before_ms: i64, limit: i64) -> Result<Vec<Target>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Target>(concat!(
        "SELECT ", target_columns!(), " FROM publish_targets
         WHERE status = 'posting' AND settled = 0 AND updated_at_ms < $1 ORDER BY updated_at_ms LIMIT $2"))
        .bind(before_ms)
        .bind(limit)
        .fetch_all(p)
        .await)
}

/// The user's targets, newest first (of one thread if given), at most `limit`.
pub async fn targets(
    db: &Db,
    user_id: i64,
    thread_prefix: Option<&str>,
    limit: i64,
) -> Result<Vec<Target>, sqlx::Error> {
    let pattern = thread_prefix.map(|p| format!("{p}:%"));
    read_pool!(db, p => sqlx::query_as::<_, Target>(concat!(
        "SELECT ", target_columns!(), " FROM publish_targets
         WHERE user_id = $1 AND ($2 IS NULL OR thread_key LIKE $2)
         ORDER BY created_at_ms DESC, id DESC LIMIT $3"))
        .bind(user_id)
        .bind(pattern)
        .bind(limit)
        .fetch_all(p)
        .await)
}

/// Names the platform handle of an attempted post once it exists (a Threads container).
pub async fn set_client_key(
    db: &Db,
    thread_key: &str,
    position: i64,
    client_key: &str,
) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE published_posts SET client_key = $3, updated_at_ms = $4
         WHERE thread_key = $1 AND position = $2 AND status = 'attempted'")
        .bind(thread_key)
        .bind(position)
        .bind(client_key)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}
