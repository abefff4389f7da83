//! `runs`: one row per serving process, written at start and after a clean shutdown, so that
//! `tollgate ledger verify` can see a run that stopped with requests admitted but never settled
//! (two statements per process lifetime; nothing on the request path).

use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

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

/// Whether `e` says the `runs` table does not exist (a database no gateway of this version has
/// migrated yet: `ledger verify` only reads, so it reports no runs rather than failing).
fn no_runs_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().as_deref() == Some("42P01") || d.message().contains("no such table"))
}

/// Runs that stopped with unsettled requests: `(run, started_at_ms, unsettled)`.
pub async fn with_unsettled(db: &Db) -> Result<Vec<(i64, i64, i64)>, sqlx::Error> {
    let rows = read_pool!(db, p => sqlx::query_as(
        "SELECT id, started_at_ms, unsettled FROM runs WHERE unsettled > 0 ORDER BY id LIMIT $1",
    )
    .bind(super::audit::LIMIT)
    .fetch_all(p)
    .await);
    match rows {
        Err(e) if no_runs_table(&e) => Ok(Vec::new()),
        other => other,
    }
}

/// Runs with no recorded stop: running now, or killed.
pub async fn without_stop(db: &Db) -> Result<i64, sqlx::Error> {
    let count = read_pool!(db, p => sqlx::query_scalar(
        "SELECT COUNT(*) FROM runs WHERE stopped_at_ms IS NULL",
    )
    .fetch_one(p)
    .await);
    match count {
        Err(e) if no_runs_table(&e) => Ok(0),
        other => other,
    }
}
