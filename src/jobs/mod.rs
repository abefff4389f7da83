//! The one job mechanism: everything deferred (scheduled publishes, video task polls, WeChat
//! publish checks) is a row in the jobs table (`db::jobs`), claimed by lease by the worker on
//! every instance, or by a `tollgate worker` process. A worker claims one due job at a time
//! while it has a free slot (`jobs.concurrency`), renews the lease every third of it while the
//! job runs, and ends it with what the job's kind answers ([`Done`]). An instance that dies
//! leaves its running jobs to whoever claims them after their leases run out; each kind makes a
//! second run safe (a publish never re-sends a post whose outcome is unknown).

use crate::db::{self, jobs::Claim, jobs::Job};
use crate::metrics as m;
use crate::state::AppState;
use rand::RngExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// How a job's run ended.
#[derive(Debug)]
pub enum Done {
    /// Finished; what it produced (a URL, an id), if anything.
    Succeeded(Option<String>),
    /// Finished without doing its work, for a reason the user sees.
    Failed(String),
    /// Its subject was cancelled (or deleted) before it could run.
    Cancelled(String),
    /// Its side effect may or may not have happened; left for the user to resolve.
    Unconfirmed(String),
    /// Nothing was done and trying later may work: retried after `after_ms` (at least), up
    /// to `jobs.max_attempts` tries, then failed with `why`.
    Retry { after_ms: Option<i64>, why: String },
    /// One step of a job that runs in steps (a poll): the next step is due at `at_ms`.
    Again { at_ms: i64 },
}

/// What `/readyz` reads: whether this instance works jobs, and when its last claim went
/// through (or its worker started).
#[derive(Debug, Default)]
pub struct Health {
    pub working: std::sync::atomic::AtomicBool,
    pub last_claim_ms: AtomicI64,
    /// Every slot is running a job (busy, not stuck).
    pub saturated: std::sync::atomic::AtomicBool,
    /// Wakes this instance's worker when a job it should look at was written here.
    pub wake: Notify,
}

impl Health {
    /// Why this instance cannot claim jobs now, if it cannot: its worker has not claimed (or
    /// found nothing to claim) for longer than three poll intervals and 5 s.
    pub fn problem(&self, poll_interval_ms: u64) -> Option<String> {
        if !self.working.load(Ordering::Relaxed) || self.saturated.load(Ordering::Relaxed) {
            return None;
        }
        let last = self.last_claim_ms.load(Ordering::Relaxed);
        let allowed = (3 * poll_interval_ms as i64).max(5_000);
        let since = crate::clock::now_ms() - last;
        (since > allowed)
            .then(|| format!("the job worker has not been able to claim jobs for {since} ms"))
    }
}

/// A job kind's work.
async fn run_kind(state: &AppState, job: &Job) -> Done {
    match job.kind.as_str() {
        crate::social::schedule::KIND => crate::social::schedule::run(state, job).await,
        crate::gateway::videos::POLL_KIND => crate::gateway::videos::poll_job(state, job).await,
        crate::social::creation_publish::KIND => {
            crate::social::creation_publish::run(state, job).await
        }
        other => Done::Failed(format!("no worker knows jobs of kind {other}")),
    }
}

/// Works jobs until `stop`; running jobs finish (or their leases lapse) after it.
pub async fn run(state: AppState, stop: CancellationToken) {
    let cfg = state.config.jobs.clone();
    let owner: Arc<str> = Arc::from(format!(
        "{}-{:012x}",
        std::process::id(),
        rand::rng().random::<u64>() & 0xffff_ffff_ffff
    ));
    let slots = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let health = &state.jobs;
    // Counted from now: a worker that just started has not failed to claim yet.
    health
        .last_claim_ms
        .store(crate::clock::now_ms(), Ordering::Relaxed);
    health.working.store(true, Ordering::Relaxed);
    let poll = Duration::from_millis(cfg.poll_interval_ms.max(10));
    let mut last_gauge = 0i64;
    tracing::info!(owner = %owner, concurrency = cfg.concurrency, "job worker started");
    loop {
        health
            .saturated
            .store(slots.available_permits() == 0, Ordering::Relaxed);
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        health.saturated.store(false, Ordering::Relaxed);
        let now = crate::clock::now_ms();
        if now - last_gauge >= 5_000 {
            last_gauge = now;
            let before = now - cfg.overdue_after_ms as i64;
            if let Ok(n) = db::jobs::overdue(&state.db, before).await {
                metrics::gauge!(m::JOBS_OVERDUE).set(n as f64);
            }
        }
        match db::jobs::claim(&state.db, &owner, cfg.lease_ms as i64).await {
            Ok(Claim::Got(job)) => {
                health.last_claim_ms.store(now, Ordering::Relaxed);
                let lateness = (now - job.run_at_ms.min(job.effective_at_ms)).max(0);
                if job.attempts == 1 {
                    metrics::histogram!(m::JOB_LATENESS, "kind" => job.kind.clone())
                        .record(lateness as f64 / 1000.0);
                }
                let (state2, owner2) = (state.clone(), Arc::clone(&owner));
                state.tasks.spawn(async move {
                    work(&state2, &owner2, *job).await;
                    drop(permit);
                });
                continue;
            }
            Ok(Claim::Contended) => {
                health.last_claim_ms.store(now, Ordering::Relaxed);
                continue;
            }
            Ok(Claim::Nothing) => {
                health.last_claim_ms.store(now, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "claiming a job failed"),
        }
        drop(permit);
        // Sleep until the next job falls due, at most one poll interval. A job already due
        // that was not claimed waits for its account's running job: its end wakes this
        // worker when it ran here, the poll (every 25 ms meanwhile) when it ran elsewhere.
        let now = crate::clock::now_ms();
        let wait = match db::jobs::next_due(&state.db).await {
            Ok(Some(at)) if at > now => {
                Duration::from_millis((at - now).clamp(5, poll.as_millis() as i64) as u64)
            }
            Ok(Some(_)) => poll.min(Duration::from_millis(25)),
            _ => poll,
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = health.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    health.working.store(false, Ordering::Relaxed);
}

/// Runs one claimed job with its lease renewed, and ends it.
async fn work(state: &AppState, owner: &str, job: Job) {
    let cfg = &state.config.jobs;
    let lease = cfg.lease_ms as i64;
    let renew_every = Duration::from_millis((cfg.lease_ms / 3).max(10));
    let done = {
        let run = run_kind(state, &job);
        tokio::pin!(run);
        loop {
            tokio::select! {
                d = &mut run => break d,
                _ = tokio::time::sleep(renew_every) => {
                    let until = crate::clock::now_ms() + lease;
                    match db::jobs::renew(&state.db, &job.id, owner, until).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(job = %job.id, "lost the lease of a running job"),
                        Err(e) => tracing::warn!(job = %job.id, error = %e, "renewing a job's lease failed"),
                    }
                }
            }
        }
    };
    let kind = job.kind.clone();
    // A pending job again (a retry, or the next step) or an end, each fenced by the lease.
    let (label, ended) = match &done {
        Done::Retry { after_ms, why } => {
            let backoff =
                cfg.retry_base_ms
                    .saturating_mul(1 << (job.attempts.clamp(1, 16) - 1)) as i64;
            let at = crate::clock::now_ms() + after_ms.unwrap_or(0).max(backoff);
            let again = db::jobs::again(&state.db, &job.id, owner, at, Some(why)).await;
            ("retry", again)
        }
        Done::Again { at_ms } => {
            let again = db::jobs::again(&state.db, &job.id, owner, *at_ms, None).await;
            ("again", again)
        }
        Done::Succeeded(result) => {
            let result = result.as_deref();
            let end = db::jobs::end(&state.db, &job.id, owner, "succeeded", result, None).await;
            ("succeeded", end)
        }
        Done::Failed(why) | Done::Cancelled(why) | Done::Unconfirmed(why) => {
            let label = match &done {
                Done::Failed(_) => "failed",
                Done::Cancelled(_) => "cancelled",
                _ => "unconfirmed",
            };
            let end = db::jobs::end(&state.db, &job.id, owner, label, None, Some(why)).await;
            (label, end)
        }
    };
    match ended {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(job = %job.id, "a job's end was not recorded: its lease had passed to another")
        }
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "recording a job's end failed; it runs again after its lease")
        }
    }
    if label != "again" {
        metrics::counter!(m::JOBS_FINISHED, "kind" => kind, "outcome" => label).increment(1);
    }
    // The account's next job (if one waits) may run now.
    if job.queue_key.is_some() {
        state.jobs.wake.notify_one();
    }
}
