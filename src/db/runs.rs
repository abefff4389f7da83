//! `runs`: one row per serving process, written at start and after a clean shutdown, so that
//! `tollgate ledger verify` can see a run that stopped with requests admitted but never settled
//! (two statements per process lifetime; nothing on the request path).

use super::{Db, now_ms, read_pool, write_pool};

/// Records that a serving process started; returns its run id.
pub async fn start(db: &Db) -> Result<i64, sqlx::Error> {
    write_pool!(db, p => sqlx::query_scalar(
        "INSERT INTO runs (started_at_ms) VALUES ($1) RETURNING id",
    )
    .bind(now_ms())
    .fetch_one(p)
    .await)
}

/// Records a clean stop, with the reservations the run took and never settled.
pub async fn stop(db: &Db, run: i64, unsettled: i64) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE runs SET stopped_at_ms = $1, unsettled = $2 WHERE id = $3",
    )
    .bind(now_ms())
    .bind(unsettled)
    .bind(run)
    .execute(p)
    .await
    .map(|_| ()))
}

/// Runs that stopped with unsettled requests: `(run, started_at_ms, unsettled)`.
pub async fn with_unsettled(db: &Db) -> Result<Vec<(i64, i64, i64)>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as(
        "SELECT id, started_at_ms, unsettled FROM runs WHERE unsettled > 0 ORDER BY id LIMIT $1",
    )
    .bind(super::audit::LIMIT)
    .fetch_all(p)
    .await)
}

/// Runs with no recorded stop: running now, or killed.
pub async fn without_stop(db: &Db) -> Result<i64, sqlx::Error> {
    read_pool!(db, p => sqlx::query_scalar(
        "SELECT COUNT(*) FROM runs WHERE stopped_at_ms IS NULL",
    )
    .fetch_one(p)
    .await)
}
