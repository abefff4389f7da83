//! The reconciler: releases reservations whose expiry has passed (left behind by an instance
//! that crashed mid-request). Runs once at start, before the server answers (startup awaits
//! [`run_once`]), then every `billing.reconcile_interval_ms` ([`run`]); safe to run on several
//! instances at once, since each release deletes its row first.

use crate::db::{self, Db};
use crate::metrics as m;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Releases expired reservations once; returns how many.
pub async fn run_once(db: &Db) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let released = db::billing::release_expired(db, crate::clock::now_ms(), 500).await?;
        total += released;
        if released < 500 {
            break;
        }
    }
    if total > 0 {
        metrics::counter!(m::RECONCILER_RELEASES).increment(total);
        tracing::warn!(released = total, "released expired reservations");
    }
    Ok(total)
}

/// Runs [`run_once`] every `interval` (the first time after one interval) until `stop` is
/// cancelled.
pub async fn run(db: Db, interval: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = run_once(&db).await {
            tracing::error!(error = %e, "reconciler failed");
        }
    }
}
